"""LayerNorm scale and residual-norm effects of ablating a head (paper Figs 4, 5, 16-18).

Per token and configured head, under each ablation:
- ln_scale_ratio   = clean / ablated final-LN scale, from the engine's store (Fig 4: above 1
                     when the ablation shrinks the residual stream, so LayerNorm scales the rest
                     of it up: the LayerNorm part of self-repair);
- resid_norm_ratio = ablated / clean L2 norm of the final residual stream (Figs 16-18), from a
                     rerun of the head's ablation (residual_norms), since the engine keeps no
                     residual;
- de_clean, logit_diff from the engine's store (Fig 5), and the head's top tokens.

The rerun recomputes the final-LN scale too, and the stage refuses to write when it disagrees
with the engine's: both must have ablated the same rows with the same z.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np
import torch
import xarray as xr
from jaxtyping import Int
from torch import Tensor

from selfrepair.analysis.mechanisms import ratio_shares
from selfrepair.analysis.reduce import top_token_mask
from selfrepair.engine.ablation import ablated_final, ablation_chunks
from selfrepair.engine.inputs import normalize_heads, validate_tokens
from selfrepair.models.forward import check_supported
from selfrepair.models.readout import readout
from selfrepair.variables import head_label

if TYPE_CHECKING:
    from transformer_lens import HookedTransformer

__all__ = [
    "ENGINE_VARIABLES",
    "engine_heads",
    "head_coords",
    "norm",
    "norm_ratios",
    "residual_norms",
]


def head_coords(heads: Sequence[Sequence[int]]) -> dict[str, object]:
    """The head coordinate (labels) with the layer and index of each head beside it."""
    return {
        "head": [head_label(*h) for h in heads],
        "head_layer": ("head", [int(h[0]) for h in heads]),
        "head_index": ("head", [int(h[1]) for h in heads]),
    }


def residual_norms(
    model: HookedTransformer,
    tokens: Int[Tensor, "rows pos_plus_1"],
    ablation: str,
    heads: Sequence[Sequence[int]],
    *,
    batch_size: int | None = None,
    mean_include_bos: bool = True,
) -> xr.Dataset:
    """L2 norm of the final residual stream (before the final LayerNorm) and the final-LN scale,
    clean (batch, pos) and with each head ablated (head, batch, pos), ablating as the engine does
    over `tokens` (pass one shard to match one shard of the engine)."""
    check_supported(model)
    validate_tokens(model, tokens)
    normalize_heads(model, heads)  # fails naming an out-of-range head
    heads = [(int(h[0]), int(h[1])) for h in heads]
    n_rows, n_pos = tokens.shape[0], tokens.shape[1] - 1
    ro = readout(model)
    final = f"blocks.{model.cfg.n_layers - 1}.hook_resid_post"
    out = {
        "resid_norm_clean": np.zeros((n_rows, n_pos), np.float32),
        "ln_scale_clean": np.zeros((n_rows, n_pos), np.float32),
        "resid_norm_ablated": np.zeros((len(heads), n_rows, n_pos), np.float32),
        "ln_scale_ablated": np.zeros((len(heads), n_rows, n_pos), np.float32),
    }
    chunks = ablation_chunks(
        model,
        tokens,
        ablation,
        {layer for layer, _ in heads},
        ro,
        batch_size=batch_size or n_rows,
        mean_include_bos=mean_include_bos,
        keep=[final],
    )
    for chunk in chunks:
        with torch.no_grad():
            rows = chunk.rows.numpy()
            out["resid_norm_clean"][rows] = norm(chunk.kept[final])
            out["ln_scale_clean"][rows] = chunk.cp.scale.cpu().numpy()
            for i, (layer, head) in enumerate(heads):
                x, _ = ablated_final(model, chunk, layer, head)
                out["resid_norm_ablated"][i, rows] = norm(x)
                out["ln_scale_ablated"][i, rows] = ro.scale(x).cpu().numpy()
    dims2, dims3 = ("batch", "pos"), ("head", "batch", "pos")
    data = {k: (dims3 if v.ndim == 3 else dims2, v) for k, v in out.items()}
    coords = head_coords(heads) | {"batch": np.arange(n_rows), "pos": np.arange(n_pos)}
    return xr.Dataset(data, coords=coords, attrs={"ablation": ablation})


def norm(x: Tensor) -> np.ndarray:
    """L2 norm over d_model, summed in float64, as float32 numpy."""
    return x.double().norm(dim=-1).float().cpu().numpy()


# The ablation stores' per-token head variables norm_ratios reads.
ENGINE_VARIABLES = ("ln_scale_ablated", "de_clean", "logit_diff")


def engine_heads(ds: xr.Dataset, heads: Sequence[Sequence[int]], names: Sequence[str]):
    """The engine's per-token variables of the given heads, dims (head, batch, pos); fails
    naming the head when the engine did not measure it (a model entry's `heads` left it out)."""
    parts = []
    for layer, head in heads:
        one = ds[list(names)].sel(layer=int(layer), head=int(head)).load()
        if bool(np.isnan(one[names[0]].values).all()):
            raise ValueError(
                f"head {head_label(layer, head)} was not measured by the ablation stage: add it to the "
                "model's `heads` in the config (or remove that key to measure all heads)"
            )
        parts.append(one.drop_vars(["layer", "head"]))
    return xr.concat(parts, "head").assign_coords(head_coords(heads))


def norm_ratios(
    engine: xr.Dataset,
    norms: xr.Dataset,
    heads: Sequence[Sequence[int]],
    *,
    top_fraction: float = 0.02,
    tolerance: float = 1e-3,
) -> xr.Dataset:
    """Per head and token: ln_scale_ratio (engine), resid_norm_ratio (rerun), de_clean,
    logit_diff and the top-token mask; per head: the share of tokens with each ratio above 1,
    over all tokens and over the top tokens (`subset`).

    engine: the ablation stage's store(s) of one ablation (dims layer, head, batch, pos);
    norms: residual_norms over the same rows. Refuses when the rerun's final-LN scale differs
    from the engine's by more than `tolerance` (relative).
    """
    ours = engine_heads(engine, heads, ENGINE_VARIABLES).assign_coords(batch=norms.batch.values)
    clean_scale = engine.ln_scale_clean.load().assign_coords(batch=norms.batch.values)
    mismatch = float(
        max(
            np.abs(norms.ln_scale_ablated / ours.ln_scale_ablated - 1).max(),
            np.abs(norms.ln_scale_clean / clean_scale - 1).max(),
        )
    )
    if not mismatch <= tolerance:
        raise ArithmeticError(
            f"the rerun's final-LN scale differs from the ablation store's by {mismatch:.3g} "
            f"(relative, tolerance {tolerance}): the stores were made from other tokens, "
            "another ablation or another model; rerun the ablation stage"
        )
    top = top_token_mask(ours.de_clean.expand_dims(layer=[0]), top_fraction).isel(layer=0)
    out = xr.Dataset(
        {
            "ln_scale_ratio": clean_scale / ours.ln_scale_ablated,
            "resid_norm_ratio": norms.resid_norm_ablated / norms.resid_norm_clean,
            "de_clean": ours.de_clean,
            "logit_diff": ours.logit_diff,
            "ln_scale_clean": clean_scale,
            "ln_scale_ablated": ours.ln_scale_ablated,
        }
    ).transpose("head", "batch", "pos")
    out["top"] = (("head", "batch", "pos"), top.values.reshape(out.de_clean.shape))
    for ratio in ("ln_scale_ratio", "resid_norm_ratio"):
        out[f"share_{ratio}_above_1"] = xr.concat(
            [ratio_shares(out[ratio]), ratio_shares(out[ratio], out.top)], "subset"
        ).assign_coords(subset=["all", "top"])
    for name, da in out.data_vars.items():
        if da.dtype == np.float64:
            out[name] = da.astype(np.float32)
    out.attrs.update(
        engine.attrs,
        top_fraction=top_fraction,
        ln_scale_rerun_max_relative_difference=mismatch,
        ratios="ln_scale_ratio = clean / ablated final-LN scale; resid_norm_ratio = ablated / "
        "clean final residual norm",
    )
    return out
