"""Slow, obvious reference: one full forward pass with a hook per ablated head.

This is the original code's method (and TransformerLens' patching style): every quantity comes
from full-vocabulary logits and per-component vectors pushed through the final LayerNorm frozen at
the clean scale. It shares no code with the engine beyond TransformerLens itself, and exists to
check the engine (tests); full_forward.py is the same method written for speed, which the
benchmark times the engine against.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch
import xarray as xr
from jaxtyping import Float, Int
from torch import Tensor
from transformer_lens.components import LayerNorm, LayerNormPre, RMSNorm

from selfrepair.variables import HEAD_VARIABLES

if TYPE_CHECKING:
    from transformer_lens import HookedTransformer

__all__ = [
    "ablated_z",
    "ablation_hooks",
    "value_bias_of",
    "all_heads",
    "centred_target_logit",
    "frozen_ln_direct_effect",
    "heads_dataset",
    "head_output",
    "head_values",
    "patch_z",
    "reference_clean_direct_effects",
    "reference_measure_heads",
]


def centred_target_logit(
    logits: Float[Tensor, "batch pos vocab"], targets: Int[Tensor, "batch pos"]
) -> Float[Tensor, "batch pos"]:
    """The correct token's logit, centred over the vocabulary."""
    centred = logits - logits.mean(-1, keepdim=True)
    return centred.gather(-1, targets[..., None])[..., 0]


def frozen_ln_direct_effect(
    model: HookedTransformer,
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


def head_output(
    model: HookedTransformer, z: Float[Tensor, "batch pos head d_head"], layer: int, head: int
) -> Float[Tensor, "batch pos d_model"]:
    """The head's output z W_O, through TransformerLens' stacked W_O."""
    return z[:, :, head] @ model.W_O[layer, head]


def value_bias_of(model: HookedTransformer, layer: int, head: int | slice = slice(None)) -> Tensor:
    """The value bias TransformerLens folded into b_O when the model was loaded, of one head
    ([d_head]) or every head of the layer ([head, d_head]): its recorded copy (folded_b_V)."""
    return model.folded_b_V[layer, head]


def ablated_z(
    z_clean: Float[Tensor, "batch pos d_head"],
    ablation: str,
    mean_include_bos: bool = True,
    mean_dtype: torch.dtype | None = None,
    value_bias: Tensor | None = None,
) -> Float[Tensor, "batch pos d_head"]:
    """One head's z after ablation, as the paper defines it: resample, row (i + 1) mod batch;
    mean, over all rows and every position but the last (summed in mean_dtype when given);
    zero; zero-with-value-bias, -value_bias (value_bias_of), so that the slice entering W_O,
    z + b_V, is zero. z_clean is from a pass over whole rows (the last token runs too, but it
    is only a target: no measured logit reads its z, so the mean leaves it out). z_clean may
    hold every head of a layer ([batch, pos, head, d_head], value_bias [head, d_head])."""
    if ablation == "resample":
        return z_clean.roll(-1, dims=0)  # row i takes row (i + 1) mod batch
    if ablation == "mean":
        z = z_clean[:, 0 if mean_include_bos else 1 : -1]
        mean = z.mean((0, 1)) if mean_dtype is None else z.to(mean_dtype).mean((0, 1))
        return mean.to(z_clean.dtype).expand_as(z_clean)
    if ablation == "zero":
        return torch.zeros_like(z_clean)
    if ablation == "zero-with-value-bias":
        if value_bias is None:
            raise ValueError("zero-with-value-bias needs the head's value bias (value_bias_of)")
        return (-value_bias).to(z_clean.device, z_clean.dtype).expand_as(z_clean)
    raise ValueError(f"unknown ablation {ablation!r}")


def patch_z(layer: int, head: int, z_new: Tensor) -> tuple[str, Callable]:
    """A forward hook that replaces the z of `head` of `layer` by z_new."""

    def patch(z, hook):
        z = z.clone()
        z[:, :, head] = z_new
        return z

    return f"blocks.{layer}.attn.hook_z", patch


def ablation_hooks(
    cache: dict, layer: int, head: int, z_new: Tensor, freeze_ln: bool
) -> list[tuple[str, Callable]]:
    """The hooks of one ablated run: z of the head replaced (patch_z) and, with freeze_ln,
    every LayerNorm scale (final included) replaced by the clean run's (from its cache)."""
    hooks = [patch_z(layer, head, z_new)]
    if freeze_ln:
        hooks += [
            (name, lambda x, hook: cache[hook.name])
            for name in cache
            if name.endswith("hook_scale")
        ]
    return hooks


def all_heads(model: HookedTransformer, heads: Iterable[Sequence[int]] | None) -> list:
    """The given (layer, head) pairs as ints, or every head of the model when None."""
    if heads is None:
        return [
            (layer, head)
            for layer in range(model.cfg.n_layers)
            for head in range(model.cfg.n_heads)
        ]
    return [(int(layer), int(head)) for layer, head in heads]


def heads_dataset(
    model: HookedTransformer,
    per_head: dict,
    clean_logit: Tensor,
    clean_scale: Tensor,
    ablation: str,
) -> xr.Dataset:
    """HEAD_VARIABLES (layer, head, batch, pos) from {(layer, head): {name: tensor}}, NaN for
    heads not measured, with the clean logit and final-LN scale; float32."""
    n_layers, n_heads = model.cfg.n_layers, model.cfg.n_heads
    n_rows, n_pos = clean_logit.shape
    out = {
        n: np.full((n_layers, n_heads, n_rows, n_pos), np.nan, np.float32) for n in HEAD_VARIABLES
    }
    for (layer, head), values in per_head.items():
        for name, value in values.items():
            out[name][layer, head] = value.float().cpu().numpy()
    dims4 = ("layer", "head", "batch", "pos")
    data = {n: (dims4, a) for n, a in out.items()}
    data["logit_clean"] = (("batch", "pos"), clean_logit.float().cpu().numpy())
    data["ln_scale_clean"] = (("batch", "pos"), clean_scale.float().cpu().numpy())
    return xr.Dataset(data, attrs={"ablation": ablation})


def head_values(
    logit_diff: Tensor,
    de_clean: Tensor,
    de_ablated: Tensor,
    sr_heads: Tensor,
    sr_mlps: Tensor,
    ln_scale_ablated: Tensor,
) -> dict[str, Tensor]:
    """HEAD_VARIABLES of one head: self-repair is the logit change minus the direct effect's
    (Eq. 1), and the LayerNorm part the remainder after the heads' and MLPs', as in the paper."""
    self_repair = logit_diff - (de_ablated - de_clean)
    return {
        "logit_diff": logit_diff,
        "de_clean": de_clean,
        "de_ablated": de_ablated,
        "self_repair": self_repair,
        "sr_heads": sr_heads,
        "sr_mlps": sr_mlps,
        "sr_ln": self_repair - sr_heads - sr_mlps,
        "ln_scale_ablated": ln_scale_ablated,
    }


@dataclass
class _Clean:
    """The clean run of reference_measure_heads and the direct effects taken from it."""

    cache: dict
    logit: Tensor
    de: Callable[[Tensor], Tensor]  # direct effect through the final LN frozen at the clean scale
    head_de: dict[tuple[int, int], Tensor]
    mlp_de: list[Tensor]


def _clean_run(model: HookedTransformer, tokens: Tensor) -> _Clean:
    n_layers, n_heads = model.cfg.n_layers, model.cfg.n_heads
    targets = tokens[:, 1:]
    keep = slice(0, tokens.shape[1] - 1)
    logits, cache = model.run_with_cache(tokens)
    clean_scale = cache["ln_final.hook_scale"][:, keep, 0]

    def de(vec):
        return frozen_ln_direct_effect(model, vec[:, keep], clean_scale, targets)

    head_de = {
        (lay, hd): de(head_output(model, cache[f"blocks.{lay}.attn.hook_z"], lay, hd))
        for lay in range(n_layers)
        for hd in range(n_heads)
    }
    mlp_de = (
        [de(cache[f"blocks.{lay}.hook_mlp_out"]) for lay in range(n_layers)]
        if not model.cfg.attn_only
        else []
    )
    logit = centred_target_logit(logits[:, keep].double(), targets)
    return _Clean(cache=cache, logit=logit, de=de, head_de=head_de, mlp_de=mlp_de)


def _reference_head(
    model: HookedTransformer,
    tokens: Tensor,
    clean: _Clean,
    layer: int,
    head: int,
    z_new: Tensor,
    freeze_ln: bool,
) -> dict[str, Tensor]:
    """HEAD_VARIABLES of one head from one full ablated forward pass."""
    keep = slice(0, tokens.shape[1] - 1)
    de = clean.de
    with model.hooks(fwd_hooks=ablation_hooks(clean.cache, layer, head, z_new, freeze_ln)):
        abl_logits, abl_cache = model.run_with_cache(tokens)
    logit_diff = centred_target_logit(abl_logits[:, keep].double(), tokens[:, 1:]) - clean.logit
    de_clean = clean.head_de[(layer, head)]
    de_ablated = de(z_new @ model.W_O[layer, head])
    sr_heads = sum(
        de(head_output(model, abl_cache[f"blocks.{lay}.attn.hook_z"], lay, hd))
        - clean.head_de[(lay, hd)]
        for lay, hd in clean.head_de
        if (lay, hd) != (layer, head)
    )
    sr_mlps = sum(
        de(abl_cache[f"blocks.{lay}.hook_mlp_out"]) - clean.mlp_de[lay]
        for lay in range(len(clean.mlp_de))
    )
    sr_mlps = sr_mlps if torch.is_tensor(sr_mlps) else torch.zeros_like(logit_diff)
    ln_scale = abl_cache["ln_final.hook_scale"][:, keep, 0]
    return head_values(logit_diff, de_clean, de_ablated, sr_heads, sr_mlps, ln_scale)


def reference_measure_heads(
    model: HookedTransformer,
    tokens: Int[Tensor, "batch pos"],
    ablation: str = "resample",
    heads: Iterable[Sequence[int]] | None = None,
    mean_include_bos: bool = True,
    freeze_ln: bool = False,
) -> xr.Dataset:
    """The slow, obvious check of engine.measure_heads: per head, one full forward pass with a
    hook replacing its z, and every component pushed through the full unembedding.

    Args:
        model: the HookedTransformer (not modified).
        tokens: [batch, pos + 1] token rows.
        ablation: "resample" (row (i + 1) mod batch), "mean", "zero" or
            "zero-with-value-bias".
        heads: (layer, head) pairs; None: every head.
        mean_include_bos: whether the mean z includes position 0.
        freeze_ln: every LayerNorm hook_scale of the ablated run (final included) is replaced
            by the clean run's value.
    """
    tokens = tokens.to(model.W_U.device)
    with torch.no_grad():
        clean = _clean_run(model, tokens)
        per_head = {}
        for layer, head in all_heads(model, heads):
            z_new = ablated_z(
                clean.cache[f"blocks.{layer}.attn.hook_z"][:, :, head],
                ablation,
                mean_include_bos,
                value_bias=value_bias_of(model, layer, head),
            )
            per_head[layer, head] = _reference_head(
                model, tokens, clean, layer, head, z_new, freeze_ln
            )
    clean_scale = clean.cache["ln_final.hook_scale"][:, : tokens.shape[1] - 1, 0]
    return heads_dataset(model, per_head, clean.logit, clean_scale, ablation)


def reference_clean_direct_effects(
    model: HookedTransformer, tokens: Int[Tensor, "batch pos"]
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
