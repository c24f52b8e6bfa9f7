"""The original code's method, as fast as that method allows: one full forward pass per ablated
head from the embedding, with its hook_z replaced (full_forward_measure_heads). The benchmark
times the engine against it; the tests check it against reference.heads.reference_measure_heads.
Like every reference it never calls the engine's code.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
import xarray as xr
from jaxtyping import Float, Int
from torch import Tensor
from transformer_lens.components import LayerNorm, LayerNormPre, RMSNorm

from selfrepair.reference.heads import (
    ablated_z,
    all_heads,
    head_values,
    heads_dataset,
    patch_z,
    value_bias_of,
)

if TYPE_CHECKING:
    from transformer_lens import HookedTransformer

__all__ = ["correct_token_directions", "full_forward_measure_heads"]


def correct_token_directions(
    model: HookedTransformer, targets: Int[Tensor, "batch pos"]
) -> Float[Tensor, "batch pos d_model"]:
    """The final norm's weight times the vocabulary-centred unembedding column of each target: a
    vector c, centred over d_model (LayerNorm) and divided by the clean scale, adds c . u to the
    centred correct-token logit."""
    w_u = model.W_U.float()
    u = (w_u - w_u.mean(1, keepdim=True)).T[targets]
    if isinstance(model.ln_final, (LayerNorm, RMSNorm)):
        u = u * model.ln_final.w.float()
    return u


FINAL_SCALE = "ln_final.hook_scale"


@dataclass
class _FullForward:
    """The clean run of full_forward_measure_heads and what its ablated runs compare to."""

    outputs: list[str]  # every attention and MLP output hook
    mlps: list[str]
    cache: dict
    scale: Tensor  # clean final-LN scale
    clean_logit: Tensor
    clean_de: dict[str, Tensor]
    de: Callable[[Tensor, Tensor], Tensor]  # (vector, scale) -> direct effect
    target_logit: Callable[[Tensor], Tensor]  # logits -> centred correct-token logit


def _full_forward_clean(
    model: HookedTransformer, tokens: Tensor, heads: list[tuple[int, int]]
) -> _FullForward:
    n_layers = model.cfg.n_layers
    targets = tokens[:, 1:]
    n_pos = targets.shape[1]
    mlps = [] if model.cfg.attn_only else [f"blocks.{lay}.hook_mlp_out" for lay in range(n_layers)]
    outputs = [f"blocks.{lay}.hook_attn_out" for lay in range(n_layers)] + mlps
    z_names = sorted({f"blocks.{layer}.attn.hook_z" for layer, _ in heads})
    centre = isinstance(model.ln_final, (LayerNorm, LayerNormPre))
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
        tokens, names_filter=lambda name: name in {*outputs, *z_names, FINAL_SCALE}
    )
    scale = cache[FINAL_SCALE][:, :n_pos, 0].float()
    return _FullForward(
        outputs=outputs,
        mlps=mlps,
        cache=cache,
        scale=scale,
        clean_logit=target_logit(logits),
        clean_de={name: de(cache[name], scale) for name in outputs},
        de=de,
        target_logit=target_logit,
    )


def _full_forward_head(
    model: HookedTransformer,
    tokens: Tensor,
    ff: _FullForward,
    layer: int,
    head: int,
    z_new: Tensor,
) -> dict[str, Tensor]:
    """HEAD_VARIABLES of one head from one full forward pass with its z replaced."""
    z_clean = ff.cache[f"blocks.{layer}.attn.hook_z"][:, :, head]
    with model.hooks(fwd_hooks=[patch_z(layer, head, z_new)]):
        abl_logits, abl_cache = model.run_with_cache(
            tokens, names_filter=lambda name: name in {*ff.outputs, FINAL_SCALE}
        )
    w_o = model.W_O[layer, head]
    de_clean = ff.de(z_clean @ w_o, ff.scale)
    de_ablated = ff.de(z_new @ w_o, ff.scale)
    logit_diff = ff.target_logit(abl_logits) - ff.clean_logit
    delta = {name: ff.de(abl_cache[name], ff.scale) - ff.clean_de[name] for name in ff.outputs}
    attn_total = sum(v for k, v in delta.items() if k.endswith("attn_out"))
    sr_heads = attn_total - (de_ablated - de_clean)  # every head but the ablated one
    sr_mlps = sum((delta[k] for k in ff.mlps), torch.zeros_like(logit_diff))
    ln_scale = abl_cache[FINAL_SCALE][:, : ff.scale.shape[1], 0]
    return head_values(logit_diff, de_clean, de_ablated, sr_heads, sr_mlps, ln_scale)


def full_forward_measure_heads(
    model: HookedTransformer,
    tokens: Int[Tensor, "batch pos"],
    ablation: str = "resample",
    heads: Iterable[Sequence[int]] | None = None,
    mean_include_bos: bool = True,
) -> xr.Dataset:
    """The original code's method, written to run as fast as that method allows: one clean pass,
    then per ablated head one full forward pass from the embedding (all rows in one batch, whole
    rows, full logits; the last position is dropped afterwards, as the original code does) with
    the head's hook_z replaced, caching only each layer's attention and MLP output and the final
    LayerNorm scale. Same variables as engine.measure_heads; the benchmark times the engine
    against it. Direct effects are projections on the correct-token direction (equal to pushing
    each component through the final LayerNorm frozen at the clean scale and the full
    unembedding, as reference_measure_heads does, but without a vocabulary-sized product per
    component); the LayerNorm part is the remainder, as in the paper.

    Args:
        model: the HookedTransformer (not modified).
        tokens: [batch, pos + 1] token rows.
        ablation: "resample" (row (i + 1) mod batch), "mean" (summed in float32) or "zero".
        heads: (layer, head) pairs; None: every head.
        mean_include_bos: whether the mean z includes position 0.
    """
    heads = all_heads(model, heads)
    tokens = tokens.to(model.W_U.device)
    with torch.inference_mode():
        ff = _full_forward_clean(model, tokens, heads)
        per_head = {}
        for layer, head in heads:
            z_clean = ff.cache[f"blocks.{layer}.attn.hook_z"][:, :, head]
            z_new = ablated_z(
                z_clean,
                ablation,
                mean_include_bos,
                mean_dtype=torch.float32,
                value_bias=value_bias_of(model, layer, head),
            )
            per_head[layer, head] = _full_forward_head(model, tokens, ff, layer, head, z_new)
    return heads_dataset(model, per_head, ff.clean_logit, ff.scale, ablation)
