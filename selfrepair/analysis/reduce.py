"""xarray reductions of per-token, per-head measurements into per-head summaries.

"Top tokens" of a head are the top_fraction (paper: 2%) of all its tokens with the highest signed
clean direct effect. The LayerNorm share of a head's direct effect is sr_ln / de_clean per token;
tokens with de_clean <= de_epsilon are dropped (the ratio explodes near 0) and counted.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import xarray as xr

from selfrepair.config import top_count
from selfrepair.variables import HEAD_VARIABLES, head_label

__all__ = [
    "EFFECT_VARIABLES",
    "FROZEN_LN_VARIANTS",
    "LayerTokens",
    "TOKEN_DIMS",
    "best_first",
    "effect_drops",
    "frozen_ln_layers",
    "head_effect_drops",
    "head_summary",
    "head_tokens",
    "layer_mean",
    "layer_summary",
    "layer_tokens",
    "ln_share",
    "stack_tokens",
    "summary_dataset",
    "token_count",
    "top_token_mask",
]

TOKEN_DIMS = ("batch", "pos")
# The per-token variables effect_drops (and head_tokens) read.
EFFECT_VARIABLES = ("de_clean", "de_ablated", "logit_diff")


def stack_tokens(da: xr.DataArray) -> xr.DataArray:
    """Merge (batch, pos) into one `token` dimension; an array that has one already (a task's
    answer positions, analysis.tasks.scored_tokens) is returned as it is."""
    if "token" in da.dims:
        return da
    return da.stack(token=TOKEN_DIMS).reset_index("token", drop=True)


def token_count(ds: xr.Dataset | xr.DataArray) -> int:
    """The tokens of a per-token store: batch x pos, or its `token` axis."""
    if "token" in ds.dims:
        return int(ds.sizes["token"])
    return int(ds.sizes["batch"] * ds.sizes["pos"])


def best_first(values: np.ndarray, k: int) -> np.ndarray:
    """Indices of the k largest values along the last axis, largest first, ties by position,
    NaN last: the one ranking of top tokens (top_token_mask, the clean stores' candidates)."""
    filled = np.where(np.isnan(values), -np.inf, values)
    return np.argsort(-filled, axis=-1, kind="stable")[..., :k]


def top_token_mask(de_clean: xr.DataArray, fraction: float) -> xr.DataArray:
    """Per head, True on exactly ceil(fraction * n_tokens) tokens of highest clean DE.

    Heads that were not measured (all NaN) get an all-False mask. Ties are broken by token order
    so the count is exact.
    """
    flat = stack_tokens(de_clean)  # [layer, head, token]
    n_tokens = flat.sizes["token"]
    k = top_count(n_tokens, fraction)
    values = flat.transpose(..., "token").values
    order = best_first(values, k)
    mask = np.zeros(values.shape, bool)
    np.put_along_axis(mask, order, True, axis=-1)
    mask &= ~np.isnan(values)
    out = flat.transpose(..., "token").copy(data=mask)
    return out


def ln_share(sr_ln: xr.DataArray, de_clean: xr.DataArray, eps: float, clip: bool) -> xr.DataArray:
    """Per token LayerNorm part over clean DE, NaN where de_clean <= eps; clipped to [0, 1]."""
    share = (sr_ln / de_clean).where(de_clean > eps)
    return share.clip(0.0, 1.0) if clip else share


@dataclass(frozen=True)
class LayerTokens:
    """One layer of a model's per-token measurements as every per-head reduction reads them:
    the head variables with (batch, pos) merged into `token`, each head's top-token mask and
    its LayerNorm share of direct effect per token, clipped and unclipped. Made once per layer
    (layer_tokens) for the summary and the bootstrap intervals alike."""

    stacked: xr.Dataset  # HEAD_VARIABLES, dims (layer: 1, head, token)
    mask: xr.DataArray  # top_token_mask, dims (layer: 1, head, token)
    shares: dict[bool, xr.DataArray]  # clip -> ln_share, dims (layer: 1, head, token)
    de_epsilon: float  # the shares leave out tokens whose clean DE is at most this


def layer_tokens(ds: xr.Dataset, top_fraction: float, de_epsilon: float) -> Iterator[LayerTokens]:
    """The LayerTokens of each layer in turn, loading one layer at a time, so a lazily opened
    (dask) dataset of many shards never has to fit in memory at once."""
    for i in range(ds.sizes["layer"]):
        layer = ds[list(HEAD_VARIABLES)].isel(layer=[i]).load()
        stacked = xr.Dataset({name: stack_tokens(layer[name]) for name in HEAD_VARIABLES})
        shares = {
            clip: ln_share(stacked.sr_ln, stacked.de_clean, de_epsilon, clip)
            for clip in (True, False)
        }
        mask = top_token_mask(layer.de_clean, top_fraction)
        yield LayerTokens(stacked, mask, shares, de_epsilon)


def head_summary(
    ds: xr.Dataset, top_fraction: float = 0.02, de_epsilon: float = 0.01
) -> xr.Dataset:
    """Per (layer, head): mean of every head variable over all tokens (`mean_*`) and over the
    head's top tokens (`top_*`), the LayerNorm share of DE on top tokens, clipped and
    unclipped, and how many top tokens the share dropped for DE <= de_epsilon.

    One layer at a time (layer_tokens).
    """
    layers = [layer_summary(lt) for lt in layer_tokens(ds, top_fraction, de_epsilon)]
    return summary_dataset(layers, ds, top_fraction, de_epsilon)


def summary_dataset(
    layers: list[xr.Dataset], ds: xr.Dataset, top_fraction: float, de_epsilon: float
) -> xr.Dataset:
    """The per-layer summaries (layer_summary) of ds as one Dataset with its attributes."""
    summary = xr.concat(layers, "layer")
    summary.attrs.update(ds.attrs)
    summary.attrs.update(
        top_fraction=top_fraction,
        de_epsilon=de_epsilon,
        n_tokens=token_count(ds),
    )
    return summary


def layer_summary(lt: LayerTokens) -> xr.Dataset:
    """head_summary's variables of one layer."""
    stacked, mask = lt.stacked, lt.mask
    out = {}
    for name in HEAD_VARIABLES:
        out[f"mean_{name}"] = stacked[name].mean("token")
        out[f"top_{name}"] = stacked[name].where(mask).mean("token")
    for clip, key in ((True, "top_ln_share_clipped"), (False, "top_ln_share")):
        out[key] = lt.shares[clip].where(mask).mean("token")
    kept = (stacked.de_clean > lt.de_epsilon) & mask
    out["top_n_dropped"] = (mask.sum("token") - kept.sum("token")).astype(np.int64)
    out["top_n_tokens"] = mask.sum("token").astype(np.int64)
    out["top_threshold"] = stacked.de_clean.where(mask).min("token")
    return xr.Dataset(out)


def layer_mean(summary_var: xr.DataArray) -> xr.DataArray:
    """Mean over the heads of each layer (unmeasured heads, NaN, are skipped)."""
    return summary_var.mean("head", skipna=True)


# --- Reductions the figures draw -------------------------------------------------------------


def effect_drops(
    de_clean: xr.DataArray, de_ablated: xr.DataArray, logit_diff: xr.DataArray
) -> xr.Dataset:
    """What ablating a head costs, as drops (clean minus ablated): its direct effect
    (`de_drop`, the clean DE itself under zero ablation) and the correct-token logit
    (`logit_drop` = -logit_diff). Without self-repair the two are equal (y = x); with full
    self-repair the logit does not drop (y = 0); self_repair = de_drop - logit_drop."""
    return xr.Dataset({"de_drop": de_clean - de_ablated, "logit_drop": -logit_diff})


def head_effect_drops(summary: xr.Dataset, selection: str = "mean") -> xr.Dataset:
    """effect_drops of each head's means over all tokens ("mean") or its top tokens ("top")."""
    return effect_drops(
        summary[f"{selection}_de_clean"],
        summary[f"{selection}_de_ablated"],
        summary[f"{selection}_logit_diff"],
    )


def head_tokens(ds: xr.Dataset, heads: list[tuple[int, int]]) -> xr.Dataset:
    """Per-token effect_drops of a few heads (dims head_name, token), e.g. "L22H11", read from
    lazily opened ablation shards (only those heads are loaded)."""
    names = [head_label(layer, head) for layer, head in heads]
    n_layers, n_heads = ds.sizes["layer"], ds.sizes["head"]
    for (layer, head), name in zip(heads, names, strict=True):
        if not (0 <= layer < n_layers and 0 <= head < n_heads):
            raise ValueError(f"{name} is not a head of this model ({n_layers} x {n_heads})")
    parts = []
    for layer, head in heads:
        one = ds[list(EFFECT_VARIABLES)].isel(layer=layer, head=head).load()
        parts.append(
            effect_drops(one.de_clean, one.de_ablated, one.logit_diff)
            .stack(token=TOKEN_DIMS)
            .reset_index("token", drop=True)
            .drop_vars(["layer", "head"], errors="ignore")
        )
    out = xr.concat(parts, "head_name").assign_coords(head_name=names)
    unmeasured = out.de_drop.isnull().all("token").values
    if unmeasured.any():
        missing = [n for n, bad in zip(names, unmeasured, strict=True) if bad]
        raise ValueError(f"heads {missing} were not measured in this run")
    return out


FROZEN_LN_VARIANTS = ("normal", "final LN frozen", "every LN frozen")


def frozen_ln_layers(normal: xr.Dataset, frozen: xr.Dataset) -> xr.DataArray:
    """Per-layer mean self-repair on top tokens (dims variant, layer) for the three treatments
    of LayerNorm: as measured; with only the final LayerNorm frozen at its clean scale, which
    is exactly the measured repair of heads and MLPs (sr_heads + sr_mlps; the final LN's part
    sr_ln vanishes and nothing upstream of it changes); and with every LayerNorm after the
    ablated head frozen (the `<ablation>-frozen-ln` run)."""
    rows = [
        layer_mean(normal.top_self_repair),
        layer_mean(normal.top_sr_heads + normal.top_sr_mlps),
        layer_mean(frozen.top_self_repair),
    ]
    return xr.concat(rows, "variant").assign_coords(variant=list(FROZEN_LN_VARIANTS))
