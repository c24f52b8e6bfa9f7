"""The per-head summary and its bootstrap intervals (as analysis.reduce.head_summary and
analysis.intervals define them) assembled from every shard's parts (analysis.shards): the head
variables on each head's top tokens, their sums over all tokens and the all-token bootstrap's
partial totals. What summarize_heads computes for the text run, from shards of either layout.

Means are float64 sums over the tokens divided by their count, stored as float32; the top
tokens are head_top_tokens' (the clean cache's selection, the one the attribution sums use).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import xarray as xr

from selfrepair.analysis.intervals import (
    INTERVALS,
    _interval_array,
    intervals_dataset,
    percentile_interval,
)
from selfrepair.analysis.shards import (
    CANDIDATE_VALUES,
    candidate_tokens,
    layout_of,
    row_sums,
    summary_parts,
)
from selfrepair.variables import HEAD_VARIABLES

__all__ = [
    "gather_top",
    "masked_mean",
    "read_candidates",
    "read_row_sums",
    "read_summary_parts",
    "summary_and_intervals_from_parts",
]


def gather_top(parts: Sequence[xr.Dataset]) -> dict[str, np.ndarray]:
    """Each head's top tokens over all shards in token order: name -> [layer, head, k] for
    `token` and every head variable (the shards' top_values, in shard order)."""
    token = np.concatenate([p.top_token.values for p in parts], -1)
    valid = token >= 0
    k = int(valid.sum(-1).max()) if token.size else 0
    if (valid.sum(-1) != k).any():
        raise ValueError("the shards hold different numbers of top tokens per head")
    order = np.argsort(~valid, axis=-1, kind="stable")[..., :k]
    out = {"token": np.take_along_axis(token, order, -1)}
    for name in HEAD_VARIABLES:
        values = np.concatenate([p[f"top_{name}"].values for p in parts], -1)
        out[name] = np.take_along_axis(values, order, -1)
    return out


def _mean(total: np.ndarray, count: np.ndarray) -> np.ndarray:
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(count > 0, total / np.maximum(count, 1), np.nan).astype(np.float32)


def masked_mean(values: np.ndarray) -> np.ndarray:
    """Mean over the last axis of the finite values (float64 sum), float32; NaN if none."""
    finite = np.isfinite(values)
    total = np.where(finite, values.astype(np.float64), 0.0).sum(-1)
    return _mean(total, finite.sum(-1))


def _shares(top: Mapping[str, np.ndarray], eps: float) -> dict[bool, np.ndarray]:
    """The LayerNorm share of DE on each top token (reduce.ln_share), clipped and not."""
    with np.errstate(invalid="ignore", divide="ignore"):
        share = np.where(top["de_clean"] > eps, top["sr_ln"] / top["de_clean"], np.nan)
    return {True: np.clip(share, 0.0, 1.0), False: share}


def _summary(
    top: Mapping[str, np.ndarray], sums: xr.Dataset, measured: np.ndarray, eps: float
) -> dict[str, np.ndarray]:
    dims = ("layer", "head")
    out = {}
    for name in HEAD_VARIABLES:
        out[f"mean_{name}"] = (
            dims,
            _mean(sums[f"sum_{name}"].values, sums[f"count_{name}"].values),
        )
        out[f"top_{name}"] = (dims, np.where(measured, masked_mean(top[name]), np.nan))
    shares = _shares(top, eps)
    for clip, key in ((True, "top_ln_share_clipped"), (False, "top_ln_share")):
        out[key] = (dims, np.where(measured, masked_mean(shares[clip]), np.nan))
    k = np.where(measured, top["token"].shape[-1], 0).astype(np.int64)
    kept = np.where(measured, (top["de_clean"] > eps).sum(-1), 0).astype(np.int64)
    out["top_n_dropped"] = (dims, k - kept)
    out["top_n_tokens"] = (dims, k)
    lowest = np.where(measured[..., None], top["de_clean"], 0.0).min(-1, initial=np.inf)
    out["top_threshold"] = (dims, np.where(measured, lowest, np.nan).astype(np.float32))
    return out


def _top_interval(values: np.ndarray, measured: np.ndarray, bootstrap: Mapping[str, Any]):
    rows = values.reshape(-1, values.shape[-1])[measured.ravel()]
    flat = _interval_array(rows, measured.ravel(), **bootstrap)
    return flat.reshape(*measured.shape, 2)


def _all_token_interval(total: np.ndarray, kept: np.ndarray, measured: np.ndarray, level: float):
    """mean_self_repair's interval from the summed bootstrap parts ([layer, head, resample])."""
    out = np.full((*measured.shape, 2), np.nan)
    if measured.any():
        with np.errstate(invalid="ignore", divide="ignore"):
            means = np.where(kept > 0, total / np.maximum(kept, 1), np.nan)[measured]
        out[measured] = percentile_interval(means, level)
    return out


def summary_and_intervals_from_parts(
    parts: Sequence[xr.Dataset],
    *,
    n_tokens: int,
    top_fraction: float,
    de_epsilon: float,
    n_resamples: int,
    level: float,
    seed: int,
    attrs: Mapping[str, Any],
    coords: Mapping[str, Any] | None = None,
) -> tuple[xr.Dataset, xr.Dataset]:
    """head_summary and head_intervals of a (model, ablation) from its shards' parts.

    Args:
        parts: per shard in order, its top_values, token_sums and `boot_total`, `boot_kept`
            (bootstrap_sums of self_repair per head) in one Dataset (dims layer, head, ...).
        n_tokens: the run's tokens (the means' and the bootstrap's n).
        top_fraction, de_epsilon: as reduce.head_summary.
        n_resamples, level, seed: as intervals.head_intervals.
        attrs: the stores' attributes (the first shard's).
        coords: the layer and head coordinates (the stores'); None: the parts'.
    """
    top = gather_top(parts)
    sums = sum(p[[f"{s}_{n}" for s in ("sum", "count") for n in HEAD_VARIABLES]] for p in parts)
    measured = sums.count_de_clean.values > 0
    if coords is None:
        coords = {d: parts[0][d].values for d in ("layer", "head") if d in parts[0].coords}
    summary = xr.Dataset(_summary(top, sums, measured, de_epsilon), coords=coords)
    summary.attrs.update(attrs)
    summary.attrs.update(top_fraction=top_fraction, de_epsilon=de_epsilon, n_tokens=n_tokens)

    total = sum(p.boot_total.values for p in parts)
    kept = sum(p.boot_kept.values for p in parts)
    bootstrap = dict(n_resamples=n_resamples, level=level, seed=seed)
    quantities = {"self_repair": top["self_repair"]} | {
        f"ln_share{'_clipped' if clip else ''}": v for clip, v in _shares(top, de_epsilon).items()
    }
    out = {}
    for name, (selection, quantity) in INTERVALS.items():
        if selection == "all":
            out[name] = _all_token_interval(total, kept, measured, level)
        else:
            out[name] = _top_interval(quantities[quantity], measured, bootstrap)
    settings = dict(top_fraction=top_fraction, de_epsilon=de_epsilon, n_tokens=n_tokens)
    intervals = intervals_dataset(out, coords, attrs, **bootstrap, **settings)
    return summary, intervals


SUMMARY_PARTS = (
    "top_token",
    *(f"top_{name}" for name in HEAD_VARIABLES),
    *(f"{s}_{name}" for s in ("sum", "count") for name in HEAD_VARIABLES),
    "boot_total",
    "boot_kept",
)


def read_summary_parts(
    ds: xr.Dataset, top_token: np.ndarray, *, n_tokens: int, n_resamples: int, seed: int
) -> xr.Dataset:
    """summary_parts of one opened shard store of either layout: read (`top`, after checking
    that its bootstrap parts were drawn as asked) or computed from every token (`all`)."""
    if layout_of(ds) == "all":
        one = ds[list(HEAD_VARIABLES)].load()
        return summary_parts(one, top_token, n_tokens=n_tokens, n_resamples=n_resamples, seed=seed)
    asked = {"boot_n_tokens": n_tokens, "boot_resamples": n_resamples, "boot_seed": seed}
    held = {key: ds.attrs.get(key) for key in asked}
    if held != asked:
        raise ValueError(
            f"the shard's bootstrap parts were drawn with {held}, not {asked}: the ablate jobs "
            "ran under other data.n_tokens, figures.bootstrap or seed; rerun them "
            "(engine.store_tokens: top draws the all-token bootstrap in the ablate jobs)"
        )
    return ds[list(SUMMARY_PARTS)].load()


def read_row_sums(ds: xr.Dataset, top_token: np.ndarray) -> xr.Dataset:
    """row_sums and logit_clean (batch, pos) of one opened shard store of either layout."""
    if layout_of(ds) == "top":
        return ds[["row_logit_diff", "top_row_logit_diff", "logit_clean"]].load()
    one = ds[["logit_diff", "logit_clean"]].load()
    return row_sums(one, top_token, int(one["batch"].values[0])).assign(logit_clean=one.logit_clean)


def read_candidates(ds: xr.Dataset, k: int, context: int) -> xr.Dataset:
    """candidate_tokens of one opened shard store of either layout (a `top` shard's were
    ranked when it was written, with the explorer's k and context of that run)."""
    if layout_of(ds) == "all":
        names = list(dict.fromkeys(CANDIDATE_VALUES.values()))
        return candidate_tokens(ds[names].load(), k, context)
    held = ds.sizes["candidate"], ds.sizes["window"]
    if held != (k, context):
        raise ValueError(
            f"the shard holds {held[0]} candidate tokens per head with {held[1]} of context, "
            f"not explorer.tokens_per_head {k} and explorer.context {context}: rerun its "
            "ablate job (engine.store_tokens: top ranks them there)"
        )
    return ds[[n for n in ds.data_vars if n.startswith("cand_")]].load()
