"""xarray reductions of per-token, per-head measurements into per-head summaries.

"Top tokens" of a head are the top_fraction (paper: 2%) of all its tokens with the highest signed
clean direct effect. The LayerNorm share of a head's direct effect is sr_ln / de_clean per token;
tokens with de_clean <= de_epsilon are dropped (the ratio explodes near 0) and counted.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import xarray as xr

from .config import top_count
from .joblog import provenance
from .store import open_shards, write_zarr
from .variables import HEAD_VARIABLES

TOKEN_DIMS = ("batch", "pos")


def stack_tokens(da: xr.DataArray) -> xr.DataArray:
    """Merge (batch, pos) into one `token` dimension."""
    return da.stack(token=TOKEN_DIMS).reset_index("token", drop=True)


def top_token_mask(de_clean: xr.DataArray, fraction: float) -> xr.DataArray:
    """Per head, True on exactly ceil(fraction * n_tokens) tokens of highest clean DE.

    Heads that were not measured (all NaN) get an all-False mask. Ties are broken by token order
    so the count is exact.
    """
    flat = stack_tokens(de_clean)  # [layer, head, token]
    n_tokens = flat.sizes["token"]
    k = top_count(n_tokens, fraction)
    values = flat.transpose(..., "token").values
    filled = np.where(np.isnan(values), -np.inf, values)
    order = np.argsort(-filled, axis=-1, kind="stable")[..., :k]
    mask = np.zeros(values.shape, bool)
    np.put_along_axis(mask, order, True, axis=-1)
    mask &= ~np.isnan(values)
    out = flat.transpose(..., "token").copy(data=mask)
    return out


def ln_share(sr_ln: xr.DataArray, de_clean: xr.DataArray, eps: float, clip: bool) -> xr.DataArray:
    """Per token LayerNorm part over clean DE, NaN where de_clean <= eps; clipped to [0, 1]."""
    share = (sr_ln / de_clean).where(de_clean > eps)
    return share.clip(0.0, 1.0) if clip else share


def head_summary(
    ds: xr.Dataset, top_fraction: float = 0.02, de_epsilon: float = 0.01
) -> xr.Dataset:
    """Per (layer, head): mean of every head variable over all tokens (`mean_*`) and over the
    head's top tokens (`top_*`), the LayerNorm share of DE on top tokens, clipped and
    unclipped, and how many top tokens the share dropped for DE <= de_epsilon.

    Works one layer at a time, so a lazily opened (dask) dataset of many shards never has to
    fit in memory at once.
    """
    layers = [
        _layer_summary(ds[list(HEAD_VARIABLES)].isel(layer=[i]).load(), top_fraction, de_epsilon)
        for i in range(ds.sizes["layer"])
    ]
    summary = xr.concat(layers, "layer")
    summary.attrs.update(ds.attrs)
    summary.attrs.update(
        top_fraction=top_fraction,
        de_epsilon=de_epsilon,
        n_tokens=int(ds.sizes["batch"] * ds.sizes["pos"]),
    )
    return summary


def _layer_summary(ds: xr.Dataset, top_fraction: float, de_epsilon: float) -> xr.Dataset:
    stacked = xr.Dataset({name: stack_tokens(ds[name]) for name in HEAD_VARIABLES})
    mask = top_token_mask(ds.de_clean, top_fraction)
    out = {}
    for name in HEAD_VARIABLES:
        out[f"mean_{name}"] = stacked[name].mean("token")
        out[f"top_{name}"] = stacked[name].where(mask).mean("token")
    for clip, key in ((True, "top_ln_share_clipped"), (False, "top_ln_share")):
        share = ln_share(stacked.sr_ln, stacked.de_clean, de_epsilon, clip)
        out[key] = share.where(mask).mean("token")
    kept = (stacked.de_clean > de_epsilon) & mask
    out["top_n_dropped"] = (mask.sum("token") - kept.sum("token")).astype(np.int64)
    out["top_n_tokens"] = mask.sum("token").astype(np.int64)
    out["top_threshold"] = stacked.de_clean.where(mask).min("token")
    return xr.Dataset(out)


def layer_mean(summary_var: xr.DataArray) -> xr.DataArray:
    """Mean over the heads of each layer (unmeasured heads, NaN, are skipped)."""
    return summary_var.mean("head", skipna=True)


def summarize_heads(
    *, shards: list[str], top_fraction: float, de_epsilon: float, out: str, attrs: dict[str, Any]
) -> xr.Dataset:
    """Workflow stage: the per-head summary over all shards of one (model, ablation)."""
    summary = head_summary(open_shards(shards), top_fraction=top_fraction, de_epsilon=de_epsilon)
    summary.attrs.update(provenance(**attrs))
    write_zarr(summary, out)
    return summary
