"""Clean per-token quantities: correct-token logit, final LN scale, loss and the direct effect of
every component (embeddings, each head, each layer's attention bias, each MLP, unembedding bias).

The direct effects sum to the centred correct-token logit exactly (up to float error): that is
checked on every token by `decomposition_error`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import torch
import xarray as xr
from jaxtyping import Bool, Float, Int
from torch import Tensor
from tqdm.auto import tqdm

from selfrepair.engine.inputs import grid_coords, validate_tokens
from selfrepair.models.forward import CleanPass, check_supported, clean_pass, dot
from selfrepair.models.readout import readout
from selfrepair.variables import CLEAN_SUMMED

if TYPE_CHECKING:
    from transformer_lens import HookedTransformer

__all__ = [
    "COMPONENTS_2D",
    "chunk_direct_effects",
    "clean_direct_effects",
    "decomposition_error",
    "next_token_loss",
    "next_token_top1",
    "summed_effect",
    "total_direct_effect",
]

COMPONENTS_2D = ("de_embed", "de_pos_embed", "de_unembed_bias")


def chunk_direct_effects(
    model: HookedTransformer,
    cp: CleanPass,
    chunk: Int[Tensor, "batch pos_plus_1"],
    sl: slice,
    out: dict[str, np.ndarray],
) -> None:
    """Write one chunk's clean quantities and every component's direct effect into out."""
    s = cp.scale
    for layer in range(model.cfg.n_layers):
        w_o = model.blocks[layer].attn.W_O.float()  # [head, d_head, d_model]
        v = torch.einsum("hdm,bpm->bphd", w_o, cp.u)
        out["de_head"][layer, :, sl] = (
            (torch.einsum("bphd,bphd->hbp", cp.z[layer].float(), v) / s).cpu().numpy()
        )
        b_o = model.blocks[layer].attn.b_O.float()
        out["de_attn_bias"][layer, sl] = (dot(b_o, cp.u) / s).cpu().numpy()
        if layer in cp.mlp_dot:
            out["de_mlp"][layer, sl] = (cp.mlp_dot[layer] / s).cpu().numpy()
    out["logit_clean"][sl] = cp.logit.cpu().numpy()
    out["ln_scale_clean"][sl] = s.cpu().numpy()
    out["de_embed"][sl] = (cp.embed_dot / s).cpu().numpy()
    if cp.pos_embed_dot is not None:
        out["de_pos_embed"][sl] = (cp.pos_embed_dot / s).cpu().numpy()
    out["de_unembed_bias"][sl] = cp.const.cpu().numpy()
    out["loss"][sl] = next_token_loss(model, cp.final, chunk[:, 1:]).cpu().numpy()
    if "top1" in out:  # asked for (tasks' accuracy)
        out["top1"][sl] = next_token_top1(model, cp.final, chunk[:, 1:]).cpu().numpy()


def clean_direct_effects(
    model: HookedTransformer,
    tokens: Int[Tensor, "batch pos"],
    *,
    batch_size: int | None = None,
    progress: bool = False,
    desc: str | None = None,
    counter: Int[Tensor, "batch pos"] | None = None,
    top1: bool = False,
) -> xr.Dataset:
    """The clean direct effect of every component on every token's centred correct-token logit.

    Args:
        model: the HookedTransformer (not modified).
        tokens: [batch, pos + 1] token rows, each starting with BOS.
        batch_size: rows per clean pass (default: all); never changes a number.
        progress, desc: show a progress bar with this label.
        counter: a counterfactual token per position (metric logit_diff: answer - it).
        top1: also say whether each target is the model's top prediction (`top1`).

    Returns:
        Dims layer, head, batch, pos (pos = tokens.shape[1] - 1). Variables: logit_clean,
        ln_scale_clean, loss, target, de_head, de_attn_bias, de_mlp, de_embed, de_pos_embed,
        de_unembed_bias (and top1, counter when asked for or given).
    """
    check_supported(model)
    validate_tokens(model, tokens)
    n_rows, n_pos = tokens.shape[0], tokens.shape[1] - 1
    n_layers, n_heads = model.cfg.n_layers, model.cfg.n_heads
    batch_size = batch_size or n_rows
    device = model.W_U.device
    tokens = tokens.to(device=device, dtype=torch.long)
    ro = readout(model)
    all_layers = set(range(n_layers))

    def empty(*shape):
        return np.zeros(shape, np.float32)

    out = {
        k: empty(n_rows, n_pos) for k in ("logit_clean", "ln_scale_clean", "loss", *COMPONENTS_2D)
    }
    out["de_head"] = empty(n_layers, n_heads, n_rows, n_pos)
    out["de_attn_bias"] = empty(n_layers, n_rows, n_pos)
    out["de_mlp"] = empty(n_layers, n_rows, n_pos)
    if top1:
        out["top1"] = np.zeros((n_rows, n_pos), bool)

    for start in tqdm(
        range(0, n_rows, batch_size),
        desc=desc or "clean",
        unit="batch",
        disable=not progress,
        mininterval=5.0,
    ):
        rows = torch.arange(start, min(start + batch_size, n_rows))
        chunk = tokens[rows.to(device)]
        with torch.no_grad():
            part = None if counter is None else counter[rows].to(device)
            cp = clean_pass(
                model, chunk, ro, all_layers, set(), rows, embeddings=True, counter=part
            )
            chunk_direct_effects(model, cp, chunk, slice(start, start + len(rows)), out)

    dims2, dims3 = ("batch", "pos"), ("layer", "batch", "pos")
    data = {k: (dims2, out[k]) for k in ("logit_clean", "ln_scale_clean", "loss", *COMPONENTS_2D)}
    data["target"] = (dims2, tokens[:, 1:].to(torch.int32).cpu().numpy())
    data["de_head"] = (("layer", "head", "batch", "pos"), out["de_head"])
    data["de_attn_bias"] = (dims3, out["de_attn_bias"])
    data["de_mlp"] = (dims3, out["de_mlp"])
    if top1:
        data["top1"] = (dims2, out["top1"])
    if counter is not None:
        data["counter"] = (dims2, counter.to(torch.int32).cpu().numpy())
    coords = grid_coords(model, n_rows, n_pos)
    attrs = {
        "model": model.cfg.model_name,
        "final_norm": "LayerNorm" if ro.centre else "RMSNorm",
        "logits": "centred over the vocabulary; direct effects use the clean final-LN scale",
    }
    return xr.Dataset(data, coords=coords, attrs=attrs)


def next_token_loss(
    model: HookedTransformer,
    final_resid: Float[Tensor, "batch pos d_model"],
    targets: Int[Tensor, "batch pos"],
) -> Float[Tensor, "batch pos"]:
    """Cross-entropy of the next token, from the final residual stream (full unembedding)."""
    logits = model.unembed(model.ln_final(final_resid)).float()
    return torch.nn.functional.cross_entropy(logits.transpose(1, 2), targets, reduction="none")


def next_token_top1(
    model: HookedTransformer,
    final_resid: Float[Tensor, "batch pos d_model"],
    targets: Int[Tensor, "batch pos"],
) -> Bool[Tensor, "batch pos"]:
    """Whether each target is the model's top prediction (full unembedding)."""
    logits = model.unembed(model.ln_final(final_resid))
    return logits.argmax(-1) == targets


def summed_effect(ds: xr.Dataset, name: str) -> xr.DataArray:
    """A per-layer direct effect (CLEAN_SUMMED) summed over its layers (and heads) per token; a
    `top` clean store keeps only this sum, as `<name>_sum` (analysis.clean_layout)."""
    return ds[name].sum(CLEAN_SUMMED[name]) if name in ds else ds[f"{name}_sum"]


def total_direct_effect(ds: xr.Dataset) -> xr.DataArray:
    """Sum of every component's direct effect; equals logit_clean."""
    return (
        summed_effect(ds, "de_head")
        + summed_effect(ds, "de_attn_bias")
        + summed_effect(ds, "de_mlp")
        + ds.de_embed
        + ds.de_pos_embed
        + ds.de_unembed_bias
    )


def decomposition_error(ds: xr.Dataset) -> float:
    """max |sum of direct effects - centred correct-token logit| over all tokens."""
    return float(np.abs(total_direct_effect(ds) - ds.logit_clean).max())
