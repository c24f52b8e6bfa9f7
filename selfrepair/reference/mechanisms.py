"""Slow, obvious references for the mechanism experiments: full forward passes with a hook,
`run_with_cache`, and every vector pushed through the full unembedding (reference.heads'
frozen_ln_direct_effect). They share no code with neurons.py, norms.py, reinforcement.py or
engine/ablation.py, and exist to check them in the tests.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import torch
from jaxtyping import Int
from torch import Tensor

from selfrepair.reference.heads import ablated_z, frozen_ln_direct_effect, patch_z, value_bias_of

if TYPE_CHECKING:
    from transformer_lens import HookedTransformer

__all__ = [
    "ablated_z",
    "reference_neuron_effects",
    "reference_norms",
    "reference_reinforcement",
    "run_ablated",
]


def run_ablated(model: HookedTransformer, tokens: Tensor, layer: int, head: int, z_new: Tensor):
    """Logits and full cache of a forward pass with the z of `head` of `layer` replaced."""
    with model.hooks(fwd_hooks=[patch_z(layer, head, z_new)]):
        return model.run_with_cache(tokens)


def reference_neuron_effects(
    model: HookedTransformer,
    tokens: Int[Tensor, "batch pos"],
    ablation: str,
    layer: int,
    head: int,
    mlp_layer: int,
    mean_include_bos: bool = True,
) -> dict[str, np.ndarray]:
    """Per token: the head's clean/ablated DE, the MLP layer's clean/ablated DE and bias term,
    and each neuron's clean/ablated DE, from one clean and one ablated full forward pass; each
    neuron's output vector post_n W_out[n] is unembedded on its own."""
    keep = slice(0, tokens.shape[1] - 1)
    targets = tokens[:, 1:]
    mlp = model.blocks[mlp_layer].mlp
    with torch.no_grad():
        _, cache = model.run_with_cache(tokens)
        scale = cache["ln_final.hook_scale"][:, keep, 0]
        z_clean = cache[f"blocks.{layer}.attn.hook_z"][:, :, head]
        z_new = ablated_z(
            z_clean, ablation, mean_include_bos, None, value_bias_of(model, layer, head)
        )
        _, abl = run_ablated(model, tokens, layer, head, z_new)

        def de(vec):
            return frozen_ln_direct_effect(model, vec[:, keep], scale, targets).float().numpy()

        def neurons(c):
            # Every neuron's output vector post_n W_out[n], unembedded on its own: neurons ride
            # along the position axis, each with its token's clean scale and target.
            post = c[f"blocks.{mlp_layer}.mlp.hook_post"][:, keep]
            b, p, d_mlp = post.shape
            vecs = (post[..., None] * mlp.W_out).reshape(b, p * d_mlp, -1)
            per_neuron = frozen_ln_direct_effect(
                model,
                vecs,
                scale.repeat_interleave(d_mlp, 1),
                targets.repeat_interleave(d_mlp, 1),
            )
            return per_neuron.reshape(b, p, d_mlp).float().numpy()

        w_o = model.W_O[layer, head]
        return {
            "de_clean": de(z_clean @ w_o),
            "de_ablated": de(z_new @ w_o),
            "mlp_de_clean": de(cache[f"blocks.{mlp_layer}.hook_mlp_out"]),
            "mlp_de_ablated": de(abl[f"blocks.{mlp_layer}.hook_mlp_out"]),
            "mlp_bias_de": de(mlp.b_out.expand(*tokens.shape, -1)),
            "neuron_de_clean": neurons(cache),
            "neuron_de_ablated": neurons(abl),
        }


def reference_norms(
    model: HookedTransformer,
    tokens: Int[Tensor, "batch pos"],
    ablation: str,
    layer: int,
    head: int,
    mean_include_bos: bool = True,
) -> dict[str, np.ndarray]:
    """Final LayerNorm scale (its own hook) and final residual norm, clean and ablated."""
    keep = slice(0, tokens.shape[1] - 1)
    final = f"blocks.{model.cfg.n_layers - 1}.hook_resid_post"
    with torch.no_grad():
        _, cache = model.run_with_cache(tokens)
        z_clean = cache[f"blocks.{layer}.attn.hook_z"][:, :, head]
        z_new = ablated_z(
            z_clean, ablation, mean_include_bos, None, value_bias_of(model, layer, head)
        )
        _, abl = run_ablated(model, tokens, layer, head, z_new)
    return {
        "ln_scale_clean": cache["ln_final.hook_scale"][:, keep, 0].numpy(),
        "ln_scale_ablated": abl["ln_final.hook_scale"][:, keep, 0].numpy(),
        "resid_norm_clean": cache[final][:, keep].double().norm(dim=-1).float().numpy(),
        "resid_norm_ablated": abl[final][:, keep].double().norm(dim=-1).float().numpy(),
    }


def reference_reinforcement(
    model: HookedTransformer,
    tokens: Int[Tensor, "batch pos"],
    layer: int,
    head: int,
    scales: list[float],
) -> dict[str, np.ndarray]:
    """The paper's experiment literally: for each scale s and position p, one full forward pass
    with s x the head's clean output at p added to blocks.{layer}.hook_resid_pre at p (all rows
    at once), and the head's new DE at p with that run's own final-LN scale."""
    n_rows, n_ctx = tokens.shape
    n_pos = n_ctx - 1
    targets = tokens[:, 1:]
    inputs = tokens[:, :-1]
    w_o = model.W_O[layer, head]
    with torch.no_grad():
        _, cache = model.run_with_cache(inputs)
        out = cache[f"blocks.{layer}.attn.hook_z"][:, :, head] @ w_o  # [batch, pos, d_model]
        de_clean = frozen_ln_direct_effect(
            model, out, cache["ln_final.hook_scale"][..., 0], targets
        )
        clean_scale = cache["ln_final.hook_scale"][..., 0]
        de_new = np.zeros((len(scales), n_rows, n_pos), np.float32)
        de_new_clean_scale = np.zeros_like(de_new)
        for i, s in enumerate(scales):
            for p in range(n_pos):

                def add(resid, hook, p=p, s=s):
                    resid = resid.clone()
                    resid[:, p] += s * out[:, p]
                    return resid

                with model.hooks(fwd_hooks=[(f"blocks.{layer}.hook_resid_pre", add)]):
                    _, new = model.run_with_cache(inputs)
                new_out = new[f"blocks.{layer}.attn.hook_z"][:, :, head] @ w_o
                new_de = frozen_ln_direct_effect(
                    model, new_out, new["ln_final.hook_scale"][..., 0], targets
                )
                de_new[i, :, p] = new_de[:, p].float().numpy()
                frozen = frozen_ln_direct_effect(model, new_out, clean_scale, targets)
                de_new_clean_scale[i, :, p] = frozen[:, p].float().numpy()
    return {
        "de_clean": de_clean.float().numpy(),
        "de_new": de_new,
        "de_new_clean_scale": de_new_clean_scale,
    }
