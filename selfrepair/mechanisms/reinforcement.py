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

import numpy as np
import torch
import xarray as xr
from jaxtyping import Int
from torch import Tensor

from selfrepair.analysis.mechanisms import classify_reinforcement
from selfrepair.engine.ablation import finish_from, head_output, keeping
from selfrepair.engine.self_repair import normalize_heads, validate_tokens
from selfrepair.mechanisms.neurons import head_direct_effect
from selfrepair.mechanisms.norms import head_labels
from selfrepair.models.forward import check_supported, clean_pass
from selfrepair.models.readout import readout


def second_half_heads(model) -> list[tuple[int, int]]:
    """Every head of layers n_layers // 2 and up (the paper's 'second half of the layers')."""
    n_layers, n_heads = model.cfg.n_layers, model.cfg.n_heads
    return [(layer, h) for layer in range(n_layers // 2, n_layers) for h in range(n_heads)]


def reinforcement_heads(
    model, heads: Iterable[Sequence[int]] = (), second_half: bool = True
) -> list[tuple[int, int]]:
    """The listed heads, plus the second half's when asked, sorted and without repeats."""
    listed = [(int(h[0]), int(h[1])) for h in heads]
    if listed:
        normalize_heads(model, listed)  # fails naming an out-of-range head
    chosen = set(listed) | (set(second_half_heads(model)) if second_half else set())
    if not chosen:
        raise ValueError("no heads: list some or set second_half")
    return sorted(chosen)


def self_reinforcement(
    model,
    tokens: Int[Tensor, "rows pos_plus_1"],
    heads: Sequence[Sequence[int]],
    scales: Sequence[float] = (1.0, 3.0, 5.0),
    *,
    batch_size: int | None = None,
) -> xr.Dataset:
    """de_clean (head, batch, pos), with the clean final-LN scale, and de_new (head, scale,
    batch, pos), with the perturbed run's scale (de_new_clean_scale: with the clean one);
    positions 0 .. tokens.shape[1] - 2 predict tokens[:, 1:]."""
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
    layers = {layer for layer, _ in heads}
    n_s = len(scales)
    scale_t = torch.tensor(scales, device=device, dtype=model.cfg.dtype)
    de_clean = np.zeros((len(heads), n_rows, n_pos), np.float32)
    de_new = np.zeros((len(heads), n_s, n_rows, n_pos), np.float32)
    de_new_clean_scale = np.zeros_like(de_new)

    with torch.no_grad():
        for start in range(0, n_rows, batch_size):
            rows = torch.arange(start, min(start + batch_size, n_rows))
            b = len(rows)
            kept: dict[str, Tensor] = {}
            pre = [f"blocks.{layer}.hook_resid_pre" for layer in sorted(layers)]
            with model.hooks(fwd_hooks=keeping(pre, kept)):
                cp = clean_pass(model, tokens[rows.to(device)], ro, layers, set(), rows)
            sl = slice(start, start + b)
            for i, (layer, head) in enumerate(heads):
                de_clean[i, sl] = (
                    head_direct_effect(model, cp.z[layer], layer, head, cp.u, cp.scale)
                    .cpu()
                    .numpy()
                )
                out = head_output(model, cp.z[layer], layer, head)  # [batch, pos, d_model]
                resid_pre = kept[f"blocks.{layer}.hook_resid_pre"]
                z_name = f"blocks.{layer}.attn.hook_z"
                for p in range(n_pos):
                    # [scale * batch, p + 1, d_model]: each row edited at p only, once per scale
                    resid = resid_pre[:, : p + 1].repeat(n_s, 1, 1)
                    resid[:, p] += (scale_t[:, None, None] * out[None, :, p]).reshape(n_s * b, -1)
                    final, new = finish_from(model, layer, "resid_pre", resid, [z_name])
                    z_p = new[z_name][:, p, head].float()  # [scale * batch, d_head]
                    w_o = model.blocks[layer].attn.W_O[head].float()
                    u_p = cp.u[:, p].repeat(n_s, 1)
                    zu = torch.einsum("nd,dm,nm->n", z_p, w_o, u_p).reshape(n_s, b)
                    new_scale = ro.scale(final[:, p]).reshape(n_s, b)
                    de_new[i, :, sl, p] = (zu / new_scale).cpu().numpy()
                    de_new_clean_scale[i, :, sl, p] = (zu / cp.scale[:, p]).cpu().numpy()

    coords = {
        "head": head_labels(heads),
        "head_layer": ("head", [h[0] for h in heads]),
        "head_index": ("head", [h[1] for h in heads]),
        "scale": scales,
        "batch": np.arange(n_rows),
        "pos": np.arange(n_pos),
    }
    data = {
        "de_clean": (("head", "batch", "pos"), de_clean),
        "de_new": (("head", "scale", "batch", "pos"), de_new),
        "de_new_clean_scale": (("head", "scale", "batch", "pos"), de_new_clean_scale),
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
