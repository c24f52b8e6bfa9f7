"""Per-head bootstrap intervals over tokens for the means the figures show.

The paper stresses how noisy per-token self-repair is but shows no uncertainty. For each head,
the tokens a mean is taken over (all tokens, or the head's top tokens by clean direct effect)
are resampled with replacement `n_resamples` times and the mean recomputed; the interval is
the percentile interval of those means at `level`.

Vectorised: a resample is a vector of counts (how often each token is drawn), so the means of
all heads of a layer under a block of resamples are one matrix product, counts @ values.T.
Means that skip some tokens (the LayerNorm share drops tokens whose clean direct effect is too
small) divide by the resampled count of the tokens kept. The same count vectors serve every
head (each head's interval is a valid bootstrap of that head; nothing is compared across heads).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

import numpy as np
import xarray as xr

from selfrepair.analysis.reduce import (
    LayerTokens,
    layer_summary,
    layer_tokens,
    summary_dataset,
    token_count,
)

__all__ = [
    "BOUNDS",
    "INTERVALS",
    "bootstrap_means",
    "head_intervals",
    "intervals_dataset",
    "percentile_interval",
    "resample_blocks",
    "resample_draws",
    "summary_and_intervals",
]

if TYPE_CHECKING:  # shape annotations only: the analysis env has no jaxtyping
    from jaxtyping import Float

BOUNDS = ("low", "high")
MAX_BLOCK_ELEMENTS = 1 << 24  # resamples x tokens per block of counts (64 MB in float32)

# name in the output -> (selection, quantity); quantity is a head variable or an LN share
INTERVALS = {
    "top_self_repair": ("top", "self_repair"),
    "top_ln_share_clipped": ("top", "ln_share_clipped"),
    "top_ln_share": ("top", "ln_share"),
    "mean_self_repair": ("all", "self_repair"),
}


def resample_draws(n: int, n_resamples: int, seed: int) -> Iterator[np.ndarray]:
    """The bootstrap's draws of n items, in blocks of resamples: int [rows, n] indices.

    Block b draws from np.random.default_rng([seed, n, b]), so the resamples depend only on
    (seed, n, n_resamples), not on memory or on which head or shard they serve.
    """
    block = max(1, min(n_resamples, MAX_BLOCK_ELEMENTS // max(n, 1)))
    for b, start in enumerate(range(0, n_resamples, block)):
        rows = min(block, n_resamples - start)
        # int32 draws are numpy's int64 draws (the same bounded 32-bit stream), 4x faster
        dtype = np.int32 if n < 2**31 else np.int64
        yield np.random.default_rng([seed, n, b]).integers(0, n, size=(rows, n), dtype=dtype)


def resample_blocks(n: int, n_resamples: int, seed: int) -> Iterator[Float[np.ndarray, "r n"]]:
    """Bootstrap resamples of n items as count vectors, in blocks of rows (resample_draws)."""
    for idx in resample_draws(n, n_resamples, seed):
        rows = idx.shape[0]
        flat = (idx + n * np.arange(rows)[:, None]).ravel()
        yield np.bincount(flat, minlength=rows * n).reshape(rows, n).astype(np.float32)


def bootstrap_means(
    values: Float[np.ndarray, "unit n"], n_resamples: int, seed: int
) -> Float[np.ndarray, "unit resample"]:
    """Mean of each row of values under every resample; NaN entries are skipped (the mean is
    over the resampled non-NaN entries; NaN if a resample draws none). float32 input is
    computed in float32 (half the memory of a model's every token; the error of a float32 sum
    of a million terms is far below the bootstrap's own spread)."""
    values = np.asarray(values)
    dtype = np.result_type(values.dtype, np.float32)
    values = values.astype(dtype, copy=False)
    kept = np.isfinite(values)
    everything_kept = bool(kept.all())  # then skip the copies: a model's every token is big
    filled = values if everything_kept else np.where(kept, values, 0)
    kept_weights = None if everything_kept else kept.astype(dtype)
    out = []
    for counts in resample_blocks(values.shape[-1], n_resamples, seed):
        counts = counts.astype(dtype, copy=False)
        totals = filled @ counts.T
        if kept_weights is None:
            n_kept = np.broadcast_to(counts.sum(axis=1), totals.shape)
        else:
            n_kept = kept_weights @ counts.T
        with np.errstate(invalid="ignore", divide="ignore"):
            out.append(np.where(n_kept > 0, totals / n_kept, np.nan))
    return np.concatenate(out, axis=-1)


def percentile_interval(
    means: Float[np.ndarray, "unit resample"], level: float
) -> Float[np.ndarray, "unit 2"]:
    """(low, high) percentile interval of each row at the given coverage level."""
    alpha = (1.0 - level) / 2.0
    with np.errstate(invalid="ignore"):
        lo, hi = np.nanquantile(means, [alpha, 1.0 - alpha], axis=-1)
    return np.stack([lo, hi], axis=-1)


def _rows_by_head(
    quantity: xr.DataArray, mask: xr.DataArray | None
) -> tuple[np.ndarray, np.ndarray]:
    """Per head, the values of its selected tokens in token order ([head, k]) and which heads
    have any (unmeasured heads have none). Every measured head selects the same count."""
    values = quantity.transpose("head", "token").values
    if mask is None:
        measured = ~np.all(np.isnan(values), axis=-1)
        return values[measured], measured
    chosen = mask.transpose("head", "token").values
    measured = chosen.any(axis=-1)
    if not measured.any():
        return values[:0], measured
    k = int(chosen[measured].sum(axis=-1).max())
    return values[chosen].reshape(-1, k), measured


def _interval_array(
    rows: np.ndarray, measured: np.ndarray, n_resamples: int, level: float, seed: int
) -> np.ndarray:
    """[units, 2] intervals of the measured units' rows; NaN for units not measured."""
    out = np.full((measured.size, 2), np.nan)
    if rows.size:
        out[measured] = percentile_interval(bootstrap_means(rows, n_resamples, seed), level)
    return out


def _gathered(lt: LayerTokens) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Per INTERVALS name, one layer's rows of values to bootstrap (_rows_by_head)."""
    quantities = {
        "self_repair": lt.stacked.self_repair,
        "ln_share_clipped": lt.shares[True],
        "ln_share": lt.shares[False],
    }
    masks = {"all": None, "top": lt.mask.isel(layer=0)}
    return {
        name: _rows_by_head(quantities[quantity].isel(layer=0), masks[selection])
        for name, (selection, quantity) in INTERVALS.items()
    }


def head_intervals(
    ds: xr.Dataset,
    *,
    top_fraction: float = 0.02,
    de_epsilon: float = 0.01,
    n_resamples: int = 1000,
    level: float = 0.95,
    seed: int = 0,
) -> xr.Dataset:
    """Bootstrap intervals over tokens, per (layer, head), of the means in INTERVALS (dims
    layer, head, bound = low/high).

    The intervals of summary_and_intervals: data are read one layer at a time
    (reduce.layer_tokens); the values the bootstrap needs (each head's top tokens, and every
    token of self_repair for the all-token mean) are gathered over all heads, so each block of
    resamples is drawn once for the whole model.
    """
    return summary_and_intervals(
        ds,
        top_fraction=top_fraction,
        de_epsilon=de_epsilon,
        n_resamples=n_resamples,
        level=level,
        seed=seed,
    )[1]


def summary_and_intervals(
    ds: xr.Dataset,
    *,
    top_fraction: float = 0.02,
    de_epsilon: float = 0.01,
    n_resamples: int = 1000,
    level: float = 0.95,
    seed: int = 0,
) -> tuple[xr.Dataset, xr.Dataset]:
    """reduce.head_summary and head_intervals of ds from one pass over its layers: each
    layer's top-token mask and LayerNorm shares are made once (reduce.layer_tokens) and read by
    both, so a figure's points and its intervals are means of the same token values."""
    _check_level(level)
    layers, parts = [], []
    for lt in layer_tokens(ds, top_fraction, de_epsilon):
        layers.append(layer_summary(lt))
        parts.append(_gathered(lt))
    bootstrap = dict(n_resamples=n_resamples, level=level, seed=seed)
    return (
        summary_dataset(layers, ds, top_fraction, de_epsilon),
        _intervals(parts, ds, top_fraction, de_epsilon, **bootstrap),
    )


def _check_level(level: float) -> None:
    if not 0 < level < 1:
        raise ValueError(f"level must lie in (0, 1), got {level}")


def _intervals(
    parts: list[dict[str, tuple[np.ndarray, np.ndarray]]],
    ds: xr.Dataset,
    top_fraction: float,
    de_epsilon: float,
    *,
    n_resamples: int,
    level: float,
    seed: int,
) -> xr.Dataset:
    """The intervals Dataset of every layer's gathered rows (_gathered), in layer order."""
    n_layers, n_heads = ds.sizes["layer"], ds.sizes["head"]
    out = {}
    for name in INTERVALS:
        measured = np.concatenate([part[name][1] for part in parts])
        filled = [part[name][0] for part in parts if part[name][1].any()]
        # [measured heads of all layers, tokens]
        rows = np.concatenate(filled) if filled else np.empty((0, 0))
        interval = _interval_array(rows, measured, n_resamples, level, seed)
        out[name] = interval.reshape(n_layers, n_heads, 2)
    coords = {d: ds[d] for d in ("layer", "head") if d in ds.coords}
    settings = dict(level=level, n_resamples=n_resamples, seed=seed, top_fraction=top_fraction)
    return intervals_dataset(
        out, coords, ds.attrs, **settings, de_epsilon=de_epsilon, n_tokens=token_count(ds)
    )


def intervals_dataset(
    intervals: dict[str, np.ndarray],
    coords: dict,
    attrs: dict,
    *,
    level: float,
    n_resamples: int,
    seed: int,
    top_fraction: float,
    de_epsilon: float,
    n_tokens: int,
) -> xr.Dataset:
    """The head_intervals store: INTERVALS name -> [layer, head, 2] as (layer, head, bound)
    arrays, with the coordinates, the data's attributes and the bootstrap's settings."""
    out = {
        name: xr.DataArray(
            interval,
            dims=("layer", "head", "bound"),
            coords={"bound": list(BOUNDS)},
            attrs={"level": level, "n_resamples": n_resamples},
        )
        for name, interval in intervals.items()
    }
    result = xr.Dataset(out).assign_coords(coords)
    result.attrs.update(attrs)
    result.attrs.update(
        level=level,
        n_resamples=n_resamples,
        seed=seed,
        top_fraction=top_fraction,
        de_epsilon=de_epsilon,
        n_tokens=n_tokens,
        method="percentile bootstrap over tokens, per head",
    )
    return result
