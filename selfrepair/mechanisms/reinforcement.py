"""Self-reinforcing and self-repressing heads (paper Figs 9, 19).

For head h of layer l, token row r and position p: add s x the head's clean output at p,
z[r, p, h] W_O[h], to the residual stream entering layer l at position p only, rerun, and measure
the head's new direct effect at p, divided by the final-LN scale of that perturbed run (as the
paper does; every other direct effect here uses the clean scale).

Causal attention makes the output at p depend only on positions <= p, so each (p, s) is one
rerun of rows truncated to p + 1 positions, starting at layer l from the cached clean residual
stream: the layers below l and the positions after p are never computed. The scales are stacked
along the batch dimension.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING

import numpy as np
import torch
import xarray as xr
from jaxtyping import Float, Int
from torch import Tensor

from selfrepair.analysis.mechanisms import classify_reinforcement
from selfrepair.engine.ablation import finish_from, head_output, keeping
from selfrepair.engine.inputs import normalize_heads, validate_tokens
from selfrepair.mechanisms.neurons import head_direct_effect
from selfrepair.mechanisms.norms import head_coords
from selfrepair.models.forward import CleanPass, check_supported, clean_pass
from selfrepair.models.readout import Readout, readout

if TYPE_CHECKING:
    from transformer_lens import HookedTransformer

__all__ = [
    "perturbed_direct_effect",
    "reinforcement_heads",
    "reinforcement_with_classes",
    "second_half_heads",
    "self_reinforcement",
]


def second_half_heads(model: HookedTransformer) -> list[tuple[int, int]]:
    """Every head of layers n_layers // 2 and up (the paper's 'second half of the layers')."""
    n_layers, n_heads = model.cfg.n_layers, model.cfg.n_heads
    return [(layer, h) for layer in range(n_layers // 2, n_layers) for h in range(n_heads)]


def reinforcement_heads(
    model: HookedTransformer, heads: Iterable[Sequence[int]] = (), second_half: bool = True
) -> list[tuple[int, int]]:
    """The listed heads, plus the second half's when asked, sorted and without repeats."""
    listed = [(int(h[0]), int(h[1])) for h in heads]
    if listed:
        normalize_heads(model, listed)  # fails naming an out-of-range head
    chosen = set(listed) | (set(second_half_heads(model)) if second_half else set())
    if not chosen:
        raise ValueError("no heads: list some or set second_half")
    return sorted(chosen)


def perturbed_direct_effect(
    model: HookedTransformer,
    ro: Readout,
    cp: CleanPass,
    resid_pre: Float[Tensor, "batch pos d_model"],
    layer: int,
    head: int,
    out: Float[Tensor, "batch pos d_model"],
    scale_t: Float[Tensor, " scale"],
    p: int,
) -> tuple[Float[Tensor, "scale batch"], Float[Tensor, "scale batch"]]:
    """The head's direct effect at position p after adding scale x its clean output `out` at p
    to the residual stream entering `layer`, once per scale: divided by the perturbed run's
    final-LN scale, and by the clean one."""
    n_s, b = len(scale_t), resid_pre.shape[0]
    z_name = f"blocks.{layer}.attn.hook_z"
    # [scale * batch, p + 1, d_model]: each row edited at p only, once per scale
    resid = resid_pre[:, : p + 1].repeat(n_s, 1, 1)
    resid[:, p] += (scale_t[:, None, None] * out[None, :, p]).reshape(n_s * b, -1)
    final, new = finish_from(model, layer, "resid_pre", resid, [z_name])
    z_p = new[z_name][:, p, head].float()  # [scale * batch, d_head]
    w_o = model.blocks[layer].attn.W_O[head].float()
    u_p = cp.u[:, p].repeat(n_s, 1)
    zu = torch.einsum("nd,dm,nm->n", z_p, w_o, u_p).reshape(n_s, b)
    new_scale = ro.scale(final[:, p]).reshape(n_s, b)
    return zu / new_scale, zu / cp.scale[:, p]


def reinforcement_chunk(
    model: HookedTransformer,
    ro: Readout,
    tokens: Int[Tensor, "batch pos_plus_1"],
    rows: Int[Tensor, " batch"],
    heads: Sequence[tuple[int, int]],
    scale_t: Float[Tensor, " scale"],
    arrays: dict[str, np.ndarray],
) -> None:
    """One clean pass over a chunk of rows, then every head's perturbed reruns at every
    position, written into arrays (de_clean, de_new, de_new_clean_scale) at the chunk's rows."""
    n_pos = tokens.shape[1] - 1
    layers = {layer for layer, _ in heads}
    sl = slice(int(rows[0]), int(rows[0]) + len(rows))
    kept: dict[str, Tensor] = {}
    pre = [f"blocks.{layer}.hook_resid_pre" for layer in sorted(layers)]
    with model.hooks(fwd_hooks=keeping(pre, kept)):
        cp = clean_pass(model, tokens, ro, layers, set(), rows)
    for i, (layer, head) in enumerate(heads):
        de_clean = head_direct_effect(model, cp.z[layer], layer, head, cp.u, cp.scale)
        arrays["de_clean"][i, sl] = de_clean.cpu().numpy()
        out = head_output(model, cp.z[layer], layer, head)  # [batch, pos, d_model]
        resid_pre = kept[f"blocks.{layer}.hook_resid_pre"]
        for p in range(n_pos):
            de_new, de_new_clean_scale = perturbed_direct_effect(
                model, ro, cp, resid_pre, layer, head, out, scale_t, p
            )
            arrays["de_new"][i, :, sl, p] = de_new.cpu().numpy()
            arrays["de_new_clean_scale"][i, :, sl, p] = de_new_clean_scale.cpu().numpy()


def self_reinforcement(
    model: HookedTransformer,
    tokens: Int[Tensor, "rows pos_plus_1"],
    heads: Sequence[Sequence[int]],
    scales: Sequence[float] = (1.0, 3.0, 5.0),
    *,
    batch_size: int | None = None,
) -> xr.Dataset:
    """The direct effect of each head after adding scale x its clean output to the residual
    stream entering its layer, one position at a time.

    Args:
        model: the HookedTransformer (not modified).
        tokens: [rows, pos + 1] token ids; positions 0 .. pos - 1 predict tokens[:, 1:].
        heads: (layer, head) pairs.
        scales: the multiples of the head's output added (the paper: 1, 3, 5).
        batch_size: rows per clean pass (default: all); never changes a number.

    Returns:
        de_clean (head, batch, pos), with the clean final-LN scale, and de_new (head, scale,
        batch, pos), with the perturbed run's scale (de_new_clean_scale: with the clean one).
    """
    check_supported(model)
    validate_tokens(model, tokens)
    heads = [(int(h[0]), int(h[1])) for h in heads]
    normalize_heads(model, heads)
    scales = [float(s) for s in scales]
    if not scales:
        raise ValueError("scales is empty: give at least one (the paper: 1, 3, 5)")
    n_rows, n_pos = tokens.shape[0], tokens.shape[1] - 1
    batch_size = batch_size or n_rows
    device = model.W_U.device
    tokens = tokens.to(device=device, dtype=torch.long)
    ro = readout(model)
    scale_t = torch.tensor(scales, device=device, dtype=model.cfg.dtype)
    de_new = np.zeros((len(heads), len(scales), n_rows, n_pos), np.float32)
    arrays = {
        "de_clean": np.zeros((len(heads), n_rows, n_pos), np.float32),
        "de_new": de_new,
        "de_new_clean_scale": np.zeros_like(de_new),
    }
    with torch.no_grad():
        for start in range(0, n_rows, batch_size):
            rows = torch.arange(start, min(start + batch_size, n_rows))
            reinforcement_chunk(model, ro, tokens[rows.to(device)], rows, heads, scale_t, arrays)

    coords = head_coords(heads) | {
        "scale": scales,
        "batch": np.arange(n_rows),
        "pos": np.arange(n_pos),
    }
    dims4 = ("head", "scale", "batch", "pos")
    data = {
        name: (dims4 if a.ndim == 4 else ("head", "batch", "pos"), a) for name, a in arrays.items()
    }
    attrs = {
        "model": model.cfg.model_name,
        "de_clean": "clean direct effect, clean final-LN scale",
        "de_new": "direct effect after adding scale x the head's clean output to the residual "
        "stream entering its layer at the same position; the perturbed run's final-LN scale",
        "de_new_clean_scale": "de_new divided by the clean final-LN scale instead: the part of "
        "the change that is the head's own, not the final LayerNorm's",
    }
    return xr.Dataset(data, coords=coords, attrs=attrs)


def reinforcement_with_classes(ds: xr.Dataset) -> xr.Dataset:
    """The measurement and its classification (mechanism_reductions.classify_reinforcement)."""
    return xr.merge([ds, classify_reinforcement(ds)], combine_attrs="override")
