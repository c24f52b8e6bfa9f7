"""Slow, obvious reference: one full forward pass with a hook per ablated head.

This is the original code's method (and TransformerLens' patching style): every quantity comes
from full-vocabulary logits and per-component vectors pushed through the final LayerNorm frozen at
the clean scale. It shares no code with the engine beyond TransformerLens itself, and exists to
check the engine (tests) and to time it against (benchmark).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np
import torch
import xarray as xr
from jaxtyping import Float, Int
from torch import Tensor
from transformer_lens.components import LayerNorm, LayerNormPre, RMSNorm


def centred_target_logit(
    logits: Float[Tensor, "batch pos vocab"], targets: Int[Tensor, "batch pos"]
) -> Float[Tensor, "batch pos"]:
    centred = logits - logits.mean(-1, keepdim=True)
    return centred.gather(-1, targets[..., None])[..., 0]


def frozen_ln_direct_effect(
    model,
    vec: Float[Tensor, "batch pos d_model"],
    clean_scale: Float[Tensor, "batch pos"],
    targets: Int[Tensor, "batch pos"],
) -> Float[Tensor, "batch pos"]:
    """A component's contribution to the centred correct-token logit through the final norm
    frozen at its clean scale: centre (LayerNorm), divide, apply the norm's weight, unembed."""
    ln = model.ln_final
    x = vec.double()
    if isinstance(ln, (LayerNorm, LayerNormPre)):
        x = x - x.mean(-1, keepdim=True)
    x = x / clean_scale.double()[..., None]
    if isinstance(ln, (LayerNorm, RMSNorm)):
        x = x * ln.w.double()
    logits = x @ model.W_U.double()
    return centred_target_logit(logits, targets)


def head_output(model, z: Float[Tensor, "batch pos head d_head"], layer: int, head: int):
    return z[:, :, head] @ model.W_O[layer, head]


def reference_measure_heads(
    model,
    tokens: Int[Tensor, "batch pos"],
    ablation: str = "resample",
    heads: Iterable[Sequence[int]] | None = None,
    mean_include_bos: bool = True,
    freeze_ln: bool = False,
) -> xr.Dataset:
    """freeze_ln: every LayerNorm hook_scale of the ablated run (final included) is replaced by
    the clean run's value."""
    tokens = tokens.to(model.W_U.device)
    n_rows, n_ctx = tokens.shape
    n_layers, n_heads = model.cfg.n_layers, model.cfg.n_heads
    if heads is None:
        heads = [(layer, head) for layer in range(n_layers) for head in range(n_heads)]
    targets = tokens[:, 1:]
    keep = slice(0, n_ctx - 1)

    with torch.no_grad():
        logits, cache = model.run_with_cache(tokens)
        clean_logit = centred_target_logit(logits[:, keep].double(), targets)
        clean_scale = cache["ln_final.hook_scale"][:, keep, 0]

        def de(vec):
            return frozen_ln_direct_effect(model, vec[:, keep], clean_scale, targets)

        clean_head_de = {
            (lay, hd): de(head_output(model, cache[f"blocks.{lay}.attn.hook_z"], lay, hd))
            for lay in range(n_layers)
            for hd in range(n_heads)
        }
        clean_mlp_de = (
            [de(cache[f"blocks.{lay}.hook_mlp_out"]) for lay in range(n_layers)]
            if not model.cfg.attn_only
            else []
        )

        names = (
            "logit_diff de_clean de_ablated self_repair sr_heads sr_mlps sr_ln "
            "ln_scale_ablated".split()
        )
        out = {n: np.full((n_layers, n_heads, n_rows, n_ctx - 1), np.nan) for n in names}
        for layer, head in heads:
            z_clean = cache[f"blocks.{layer}.attn.hook_z"][:, :, head]
            if ablation == "resample":
                z_new = z_clean.roll(-1, dims=0)  # row i takes row (i + 1) mod batch
            elif ablation == "mean":
                first = 0 if mean_include_bos else 1
                z_new = z_clean[:, first:].mean((0, 1)).expand_as(z_clean)
            elif ablation == "zero":
                z_new = torch.zeros_like(z_clean)
            else:
                raise ValueError(ablation)

            def patch(z, hook, head=head, z_new=z_new):
                z = z.clone()
                z[:, :, head] = z_new
                return z

            hooks = [(f"blocks.{layer}.attn.hook_z", patch)]
            if freeze_ln:
                hooks += [
                    (name, lambda x, hook: cache[hook.name])
                    for name in cache
                    if name.endswith("hook_scale")
                ]
            with model.hooks(fwd_hooks=hooks):
                abl_logits, abl_cache = model.run_with_cache(tokens)
            logit_diff = centred_target_logit(abl_logits[:, keep].double(), targets) - clean_logit
            de_clean = clean_head_de[(layer, head)]
            de_ablated = de(z_new @ model.W_O[layer, head])
            self_repair = logit_diff - (de_ablated - de_clean)
            sr_heads = sum(
                de(head_output(model, abl_cache[f"blocks.{lay}.attn.hook_z"], lay, hd))
                - clean_head_de[(lay, hd)]
                for lay in range(n_layers)
                for hd in range(n_heads)
                if (lay, hd) != (layer, head)
            )
            sr_mlps = sum(
                de(abl_cache[f"blocks.{lay}.hook_mlp_out"]) - clean_mlp_de[lay]
                for lay in range(len(clean_mlp_de))
            )
            sr_mlps = sr_mlps if torch.is_tensor(sr_mlps) else torch.zeros_like(self_repair)
            values = {
                "logit_diff": logit_diff,
                "de_clean": de_clean,
                "de_ablated": de_ablated,
                "self_repair": self_repair,
                "sr_heads": sr_heads,
                "sr_mlps": sr_mlps,
                "sr_ln": self_repair - sr_heads - sr_mlps,  # the paper's remainder
                "ln_scale_ablated": abl_cache["ln_final.hook_scale"][:, keep, 0],
            }
            for name, value in values.items():
                out[name][layer, head] = value.cpu().numpy()

    dims4 = ("layer", "head", "batch", "pos")
    data = {n: (dims4, a.astype(np.float32)) for n, a in out.items()}
    data["logit_clean"] = (("batch", "pos"), clean_logit.float().cpu().numpy())
    data["ln_scale_clean"] = (("batch", "pos"), clean_scale.float().cpu().numpy())
    return xr.Dataset(data, attrs={"ablation": ablation})


def reference_clean_direct_effects(
    model, tokens: Int[Tensor, "batch pos"]
) -> dict[str, np.ndarray]:
    """Per-component clean direct effects from a full cached forward pass."""
    tokens = tokens.to(model.W_U.device)
    targets = tokens[:, 1:]
    keep = slice(0, tokens.shape[1] - 1)
    with torch.no_grad():
        logits, cache = model.run_with_cache(tokens)
        scale = cache["ln_final.hook_scale"][:, keep, 0]

        def de(vec):
            return (
                frozen_ln_direct_effect(model, vec[:, keep], scale, targets).float().cpu().numpy()
            )

        n_layers, n_heads = model.cfg.n_layers, model.cfg.n_heads
        out = {
            "logit_clean": centred_target_logit(logits[:, keep].double(), targets)
            .float()
            .cpu()
            .numpy(),
            "ln_scale_clean": scale.float().cpu().numpy(),
            "de_embed": de(cache["hook_embed"]),
            "de_head": np.stack(
                [
                    np.stack(
                        [
                            de(head_output(model, cache[f"blocks.{lay}.attn.hook_z"], lay, hd))
                            for hd in range(n_heads)
                        ]
                    )
                    for lay in range(n_layers)
                ]
            ),
            "de_attn_bias": np.stack(
                [de(model.b_O[lay].expand_as(cache["hook_embed"])) for lay in range(n_layers)]
            ),
        }
        if "hook_pos_embed" in cache:
            out["de_pos_embed"] = de(cache["hook_pos_embed"])
        if not model.cfg.attn_only:
            out["de_mlp"] = np.stack(
                [de(cache[f"blocks.{lay}.hook_mlp_out"]) for lay in range(n_layers)]
            )
    return out


def correct_token_directions(
    model, targets: Int[Tensor, "batch pos"]
) -> Float[Tensor, "batch pos d_model"]:
    """The final norm's weight times the vocabulary-centred unembedding column of each target: a
    vector c, centred over d_model (LayerNorm) and divided by the clean scale, adds c . u to the
    centred correct-token logit."""
    w_u = model.W_U.float()
    u = (w_u - w_u.mean(1, keepdim=True)).T[targets]
    if isinstance(model.ln_final, (LayerNorm, RMSNorm)):
        u = u * model.ln_final.w.float()
    return u


def full_forward_measure_heads(
    model,
    tokens: Int[Tensor, "batch pos"],
    ablation: str = "resample",
    heads: Iterable[Sequence[int]] | None = None,
    mean_include_bos: bool = True,
) -> xr.Dataset:
    """The original code's method, written to run as fast as that method allows: one clean pass,
    then per ablated head one full forward pass from the embedding (all rows in one batch, whole
    rows, full logits; the last position is dropped afterwards, as the original code does) with the head's hook_z replaced, caching only each layer's attention and MLP output
    and the final LayerNorm scale. Same variables as engine.measure_heads; the benchmark times
    the engine against it. Direct effects are projections on the correct-token direction (equal
    to pushing each component through the final LayerNorm frozen at the clean scale and the full
    unembedding, as reference_measure_heads does, but without a vocabulary-sized product per
    component); the LayerNorm part is the remainder, as in the paper."""
    n_layers, n_heads = model.cfg.n_layers, model.cfg.n_heads
    if heads is None:
        heads = [(layer, head) for layer in range(n_layers) for head in range(n_heads)]
    heads = [(int(layer), int(head)) for layer, head in heads]
    tokens = tokens.to(model.W_U.device)
    targets = tokens[:, 1:]
    n_rows, n_pos = targets.shape
    mlps = [] if model.cfg.attn_only else [f"blocks.{lay}.hook_mlp_out" for lay in range(n_layers)]
    outputs = [f"blocks.{lay}.hook_attn_out" for lay in range(n_layers)] + mlps
    z_names = sorted({f"blocks.{layer}.attn.hook_z" for layer, _ in heads})
    final_scale = "ln_final.hook_scale"
    centre = isinstance(model.ln_final, (LayerNorm, LayerNormPre))

    with torch.inference_mode():
        u = correct_token_directions(model, targets)

        def de(vec, scale):
            """Direct effect of a component on the correct-token logit through the frozen LN."""
            x = vec[:, :n_pos].float()
            if centre:
                x = x - x.mean(-1, keepdim=True)
            return torch.einsum("bpm,bpm->bp", x, u) / scale

        def target_logit(logits):
            logits = logits[:, :n_pos].float()
            return logits.gather(-1, targets[..., None])[..., 0] - logits.mean(-1)

        logits, cache = model.run_with_cache(
            tokens, names_filter=lambda name: name in {*outputs, *z_names, final_scale}
        )
        clean_logit = target_logit(logits)
        scale = cache[final_scale][:, :n_pos, 0].float()
        clean_de = {name: de(cache[name], scale) for name in outputs}

        names = (
            "logit_diff de_clean de_ablated self_repair sr_heads sr_mlps sr_ln "
            "ln_scale_ablated".split()
        )
        out = {n: np.full((n_layers, n_heads, n_rows, n_pos), np.nan, np.float32) for n in names}
        for layer, head in heads:
            z_clean = cache[f"blocks.{layer}.attn.hook_z"][:, :, head]
            if ablation == "resample":
                z_new = z_clean.roll(-1, dims=0)  # row i takes row (i + 1) mod batch
            elif ablation == "mean":
                first = 0 if mean_include_bos else 1
                z_new = z_clean[:, first:].float().mean((0, 1)).to(z_clean.dtype)
                z_new = z_new.expand_as(z_clean)
            elif ablation == "zero":
                z_new = torch.zeros_like(z_clean)
            else:
                raise ValueError(f"unknown ablation {ablation!r}")

            def patch(z, hook, head=head, z_new=z_new):
                z = z.clone()
                z[:, :, head] = z_new
                return z

            with model.hooks(fwd_hooks=[(f"blocks.{layer}.attn.hook_z", patch)]):
                abl_logits, abl_cache = model.run_with_cache(
                    tokens, names_filter=lambda name: name in {*outputs, final_scale}
                )
            w_o = model.W_O[layer, head]
            de_clean = de(z_clean @ w_o, scale)
            de_ablated = de(z_new @ w_o, scale)
            logit_diff = target_logit(abl_logits) - clean_logit
            self_repair = logit_diff - (de_ablated - de_clean)
            delta = {name: de(abl_cache[name], scale) - clean_de[name] for name in outputs}
            attn_total = sum(v for k, v in delta.items() if k.endswith("attn_out"))
            sr_heads = attn_total - (de_ablated - de_clean)  # every head but the ablated one
            sr_mlps = sum((delta[k] for k in mlps), torch.zeros_like(self_repair))
            values = {
                "logit_diff": logit_diff,
                "de_clean": de_clean,
                "de_ablated": de_ablated,
                "self_repair": self_repair,
                "sr_heads": sr_heads,
                "sr_mlps": sr_mlps,
                "sr_ln": self_repair - sr_heads - sr_mlps,
                "ln_scale_ablated": abl_cache[final_scale][:, :n_pos, 0],
            }
            for name, value in values.items():
                out[name][layer, head] = value.float().cpu().numpy()

    dims4 = ("layer", "head", "batch", "pos")
    data = {n: (dims4, a) for n, a in out.items()}
    data["logit_clean"] = (("batch", "pos"), clean_logit.cpu().numpy())
    data["ln_scale_clean"] = (("batch", "pos"), scale.cpu().numpy())
    return xr.Dataset(data, attrs={"ablation": ablation})
