"""Attribution patching judged against the exact ablation effects (engine.atp against
engine.self_repair): per head, the exact mean change of the correct-token logit beside the AtP
and GradDrop estimates, over all tokens and over the head's top tokens; per model, the rank
correlations, the heads each method misses among the exact top k, and how much of each head's
estimation error its measured self-repair (and the Eq. 2 parts) accounts for.

Units: over all tokens the estimates are per row (a prompt: the change of the row's summed
metric), so `all_atp` = sum of row estimates / tokens is exactly the estimate of the all-token
mean, and magnitudes are per row (|row change| / its tokens, averaged over rows); over a head's
top tokens the unit is again a row, the change of the sum of the head's top tokens in it (rows
without any are no unit), so `top_atp` is exactly the mean of per-token estimates (AtP is linear
in the metric) while magnitudes are per row. GradDrop, as AtP*: per unit, (1 / (L - 1)) sum over
dropped layers l of |estimate_l|, an estimate of the unit's |exact change|, so it is compared
with `abs_exact` only.

The error decomposes exactly: exact = (de_ablated - de_clean) + self_repair (Eq. 1), so

    atp - exact = (atp - (de_ablated - de_clean)) - sr_heads - sr_mlps - sr_ln       (Eq. 2)

where the first term (`atp_indirect`) is AtP's linear estimate of everything beyond the direct
path, that is of the self-repair: AtP's error is its self-repair estimate minus the measured
self-repair. If AtP saw none of it, its error would be minus the self-repair: `share_<part>` =
-part / error (and atp_indirect / error) add up to 1 per head.

No I/O and no torch: the analysis environment runs these.
"""

from __future__ import annotations

import html
from collections.abc import Callable

import numpy as np
import pandas as pd
import xarray as xr

from selfrepair.analysis.attribution import top_repairers
from selfrepair.analysis.tables import html_page
from selfrepair.variables import head_label

__all__ = [
    "PARTS",
    "SELECTIONS",
    "atp_summary",
    "atp_table",
    "atp_table_html",
    "graddrop_combined",
    "graddrop_stored",
    "missed_heads",
    "r_squared",
    "repairers_of",
    "slope_through_origin",
    "spearman",
    "task_units",
    "top_k_mask",
    "top_k_used",
]

SELECTIONS = ("all", "top")
PARTS = ("self_repair", "sr_heads", "sr_mlps", "sr_ln")


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    """Spearman rank correlation over the entries finite in both (average ranks for ties)."""
    ok = np.isfinite(a) & np.isfinite(b)
    if ok.sum() < 3:
        return float("nan")
    ra = pd.Series(a[ok]).rank().to_numpy()
    rb = pd.Series(b[ok]).rank().to_numpy()
    if ra.std() == 0 or rb.std() == 0:
        return float("nan")
    return float(np.corrcoef(ra, rb)[0, 1])


def top_k_mask(values: np.ndarray, k: int) -> np.ndarray:
    """bool mask of the k largest finite values (ties by position)."""
    filled = np.where(np.isfinite(values), values, -np.inf).ravel()
    order = np.argsort(-filled, kind="stable")[: min(k, int(np.isfinite(values).sum()))]
    mask = np.zeros(filled.size, bool)
    mask[order] = True
    return mask.reshape(values.shape)


def missed_heads(exact: np.ndarray, estimate: np.ndarray, k: int) -> np.ndarray:
    """Heads among the k largest of `exact` that are not among the k largest of `estimate`
    (over heads measured exactly); none when there is no estimate."""
    estimate = np.where(np.isfinite(exact), estimate, np.nan)
    if not np.isfinite(estimate).any():
        return np.zeros(exact.shape, bool)
    return top_k_mask(exact, k) & ~top_k_mask(estimate, k)


def r_squared(a: np.ndarray, b: np.ndarray) -> float:
    """Squared Pearson correlation over the entries finite in both: the share of a's variance
    across heads that a linear function of b accounts for."""
    ok = np.isfinite(a) & np.isfinite(b)
    if ok.sum() < 3 or a[ok].std() == 0 or b[ok].std() == 0:
        return float("nan")
    return float(np.corrcoef(a[ok], b[ok])[0, 1] ** 2)


def slope_through_origin(y: np.ndarray, x: np.ndarray) -> float:
    """Least-squares b of y = b x over the entries finite in both (NaN if x is all 0)."""
    ok = np.isfinite(x) & np.isfinite(y)
    denom = float(np.sum(x[ok] ** 2))
    return float(np.sum(x[ok] * y[ok]) / denom) if denom > 0 else float("nan")


def graddrop_combined(per_layer: np.ndarray) -> np.ndarray:
    """AtP*'s GradDrop estimate of |effect| per unit: (1 / (L - 1)) sum_l |estimate_l|; NaN
    for a one-layer model (no layer to drop but its own). The atp job stores it per row
    (graddrop_stored) and atp_summary averages the stored values: one definition for both, in
    the estimates' own dtype, so that the summary is what it would be from per-layer rows."""
    n = per_layer.shape[0]
    if n == 1:
        return np.full(per_layer.shape[1:], np.nan, per_layer.dtype)
    return np.abs(per_layer).sum(0) / (n - 1)


def graddrop_stored(estimates: xr.Dataset) -> xr.Dataset:
    """measure_atp's per-layer GradDrop rows (graddrop_row, graddrop_top: drop_layer, layer,
    head, batch) replaced by all atp_summary reads of them, so that the stores do not grow
    with layers x rows: per row, combined over the dropped layers (graddrop_<unit>_combined:
    layer, head, batch, float32 as graddrop_combined gives it), and per dropped layer, summed
    over the rows (graddrop_<unit>_sum: drop_layer, layer, head, float64: summed again over
    shards by the reader).

    Args:
        estimates: measure_atp's Dataset of one shard.
    """
    out = estimates
    for name in ("graddrop_row", "graddrop_top"):
        if name not in estimates:
            continue
        dims = ("drop_layer", "layer", "head", "batch")
        per_layer = estimates[name].transpose(*dims)
        out = out.drop_vars(name).assign(
            {
                f"{name}_combined": (dims[1:], graddrop_combined(per_layer.values)),
                f"{name}_sum": (dims[:-1], per_layer.values.sum(-1, dtype=np.float64)),
            }
        )
    return out


def task_units(estimates: xr.Dataset, measured: np.ndarray, top_graddrop: bool) -> xr.Dataset:
    """measure_atp's Dataset of a task (every head asked at every answer: per_token = scored)
    with the rows as each measured head's top units (a task's top tokens are all its answers:
    atp_top, n_top, graddrop_top are the row's, 0 for heads not measured), and the per-answer
    estimates on the task's `token` axis (coordinates prompt and position, the order of
    analysis.tasks.scored_tokens): atp_token (layer, head, token) and GradDrop combined over
    the dropped layers (graddrop_token_combined).

    Args:
        estimates: measure_atp's Dataset with per_token = the answers for every head.
        measured: bool [layer, head], the heads with an exact side.
        top_graddrop: keep GradDrop on the top units (engine.atp_top_graddrop).
    """
    n_layers, n_heads = measured.shape
    own = xr.DataArray(measured, dims=("layer", "head"))
    out = estimates.assign(
        atp_top=estimates.atp_row.where(own, 0.0),
        n_top=(estimates.n_scored * own).astype(np.int64).transpose("layer", "head", "batch"),
    )
    if top_graddrop and "graddrop_row" in estimates:
        out["graddrop_top"] = estimates.graddrop_row.where(own, 0.0)
    n = estimates.sizes["entry"] // (n_layers * n_heads)  # the answers, head by head
    dims = ("layer", "head", "token")
    token = {"atp_token": (dims, estimates.atp_token.values.reshape(n_layers, n_heads, n))}
    if "graddrop_token" in estimates:
        per_layer = estimates.graddrop_token.values.reshape(n_layers, n_layers, n_heads, n)
        token["graddrop_token_combined"] = (dims, graddrop_combined(per_layer))
    where = {"prompt": estimates.entry_batch.values[:n], "position": estimates.entry_pos.values[:n]}
    entries = [v for v in estimates.data_vars if v.startswith("entry_")]
    out = out.drop_vars(["atp_token", "graddrop_token", *entries], errors="ignore")
    return out.assign(token).assign_coords({k: ("token", v) for k, v in where.items()})


def _selection_values(
    sel: str,
    exact: np.ndarray,
    atp: np.ndarray,
    graddrop: tuple[np.ndarray, np.ndarray],
    scale: np.ndarray,
) -> dict[str, np.ndarray]:
    """Per head, over its units ([layer, head, unit]): the means per token of the signed
    changes, and of the magnitudes per unit; graddrop: (combined [layer, head, unit], summed
    over units [drop, layer, head]); scale: the tokens each unit sums (broadcast to
    [layer, head, unit]; units of 0 tokens are left out)."""
    scale = np.broadcast_to(scale, exact.shape)
    tokens = scale.sum(-1)
    unit = scale > 0
    per_token = np.divide(1.0, scale, out=np.zeros(scale.shape), where=unit)
    combined, summed = graddrop

    def unit_mean(x: np.ndarray) -> np.ndarray:
        return np.where(unit, x * per_token, 0.0).sum(-1) / unit.sum(-1)

    with np.errstate(divide="ignore", invalid="ignore"):
        return {
            f"{sel}_exact": exact.sum(-1) / tokens,
            f"{sel}_atp": atp.sum(-1) / tokens,
            f"{sel}_graddrop_layer": summed / tokens,
            f"{sel}_abs_exact": unit_mean(np.abs(exact)),
            f"{sel}_abs_atp": unit_mean(np.abs(atp)),
            f"{sel}_graddrop": unit_mean(combined),
        }


def _graddrop(estimates: xr.Dataset, unit: str) -> tuple[np.ndarray, np.ndarray]:
    """A unit's stored GradDrop (graddrop_stored): combined per unit and summed per dropped
    layer, or NaN where it was not run there (top tokens without engine.atp_top_graddrop)."""
    name = f"graddrop_{unit}"
    if f"{name}_combined" in estimates:
        return estimates[f"{name}_combined"].values, estimates[f"{name}_sum"].values
    combined, summed = estimates.graddrop_row_combined, estimates.graddrop_row_sum
    return np.full(combined.shape, np.nan), np.full(summed.shape, np.nan)


def atp_summary(
    estimates: xr.Dataset,
    exact_rows: xr.DataArray,
    exact_top: xr.DataArray,
    heads: xr.Dataset,
    top_k: int,
) -> xr.Dataset:
    """Per head and per model: AtP and GradDrop against the exact effect (module docstring).

    Args:
        estimates: the atp stores over all shards: per row (batch) atp_row,
            graddrop_row_combined, n_scored, and on each head's top tokens atp_top, n_top and
            graddrop_top_combined; over all rows graddrop_row_sum and graddrop_top_sum
            (drop_layer, layer, head; graddrop_stored). The top GradDrop is absent when it was
            not run there: its values are then NaN.
        exact_rows: the exact logit_diff summed over each row's tokens (layer, head, batch).
        exact_top: the same over each row's top tokens of the head (layer, head, batch).
        heads: the exact per-head summary (analysis.reduce.head_summary) of the same ablation.
        top_k: the k of "missed among the exact top k" (figures.atp.top_k), used as
            top_k_used: at most one below the heads measured, so that a head can be missed
            (0 for a model measuring one head: nothing is ranked); ds.attrs keeps both.
    """
    units = {
        "all": (exact_rows, estimates.atp_row, _graddrop(estimates, "row"), estimates.n_scored),
        "top": (exact_top, estimates.atp_top, _graddrop(estimates, "top"), estimates.n_top),
    }
    values = {}
    for sel, (exact, atp, graddrop, scale) in units.items():
        values |= _selection_values(
            sel, exact.values.astype(float), atp.values.astype(float), graddrop, scale.values
        )
        prefix = "mean" if sel == "all" else "top"
        for part in PARTS:
            values[f"{sel}_{part}"] = heads[f"{prefix}_{part}"].values.astype(float)
        values[f"{sel}_de_change"] = (
            heads[f"{prefix}_de_ablated"] - heads[f"{prefix}_de_clean"]
        ).values.astype(float)
    out = {}
    for name, v in values.items():
        dims = ("drop_layer", "layer", "head") if v.ndim == 3 else ("layer", "head")
        out[name] = (dims, v)
    ds = xr.Dataset(out, coords={"layer": heads["layer"].values, "head": heads["head"].values})
    k = top_k_used(int(np.isfinite(ds.all_exact.values).sum()), top_k)
    for sel in SELECTIONS:
        _judge(ds, sel, k)
    ds.attrs.update(top_k=top_k, top_k_used=k)
    return ds


def top_k_used(n_heads: int, top_k: int) -> int:
    """The k of "missed among the exact top k" for a model measuring n_heads: top_k, but below
    n_heads, since among the top n_heads of n_heads no head can be missed."""
    return max(0, min(top_k, n_heads - 1))


def _judge(ds: xr.Dataset, sel: str, top_k: int) -> None:
    """Add a selection's errors, shares, rank correlations, misses, how much of the error's
    variance over heads each self-repair part accounts for (error_r2_<part>) and how much of
    the self-repair AtP's indirect term predicts (repair_seen: its slope on the self-repair;
    0: none, 1: all of it)."""
    exact, atp = ds[f"{sel}_exact"].values, ds[f"{sel}_atp"].values
    measured = np.isfinite(exact)
    error = np.where(measured, atp - exact, np.nan)
    indirect = np.where(measured, atp - ds[f"{sel}_de_change"].values, np.nan)
    dims = ("layer", "head")
    ds[f"{sel}_atp_error"] = (dims, error)
    ds[f"{sel}_atp_indirect"] = (dims, indirect)
    with np.errstate(divide="ignore", invalid="ignore"):
        for part in PARTS:
            ds[f"{sel}_share_{part}"] = (dims, -ds[f"{sel}_{part}"].values / error)
        ds[f"{sel}_share_atp_indirect"] = (dims, indirect / error)
    abs_exact = np.where(measured, ds[f"{sel}_abs_exact"].values, np.nan)
    ds[f"{sel}_abs_shortfall"] = (dims, abs_exact - ds[f"{sel}_abs_atp"].values)
    ds[f"{sel}_graddrop_shortfall"] = (dims, abs_exact - ds[f"{sel}_graddrop"].values)
    ds[f"{sel}_exact_top_k"] = (dims, top_k_mask(abs_exact, top_k))
    for method, estimate in (("atp", "abs_atp"), ("graddrop", "graddrop")):
        ds[f"{sel}_missed_{method}"] = (
            dims,
            missed_heads(abs_exact, ds[f"{sel}_{estimate}"].values, top_k),
        )
    ds[f"{sel}_spearman_atp"] = spearman(exact.ravel(), atp.ravel())
    ds[f"{sel}_spearman_abs_atp"] = spearman(abs_exact.ravel(), ds[f"{sel}_abs_atp"].values.ravel())
    ds[f"{sel}_spearman_graddrop"] = spearman(
        abs_exact.ravel(), ds[f"{sel}_graddrop"].values.ravel()
    )
    for part in PARTS:
        ds[f"{sel}_error_r2_{part}"] = r_squared(error.ravel(), ds[f"{sel}_{part}"].values.ravel())
    repair = ds[f"{sel}_self_repair"].values.ravel()
    ds[f"{sel}_repair_seen"] = slope_through_origin(indirect.ravel(), repair)


TABLE_COLUMNS = {
    "top_exact": "exact Δlogit (top)",
    "top_atp": "AtP (top)",
    "top_abs_exact": "|exact| (top)",
    "top_abs_atp": "|AtP| (top)",
    "top_graddrop": "GradDrop (top)",
    "top_abs_shortfall": "|exact| − |AtP|",
    "top_atp_indirect": "AtP's self-repair estimate (top)",
    "top_self_repair": "self-repair (top)",
    "top_sr_heads": "heads",
    "top_sr_mlps": "MLPs",
    "top_sr_ln": "LayerNorm",
    "top_share_self_repair": "share of AtP error: self-repair",
    "all_exact": "exact Δlogit (all)",
    "all_atp": "AtP (all)",
}


Repairers = Callable[[tuple[int, int]], list[tuple[str, float]]]


def repairers_of(repair: xr.Dataset, n: int) -> Repairers:
    """(layer, head) -> its n top repairers (analysis.attribution.top_repairers) with their mean
    change of direct effect on its top tokens, from a repair summary."""

    def of(head: tuple[int, int]) -> list[tuple[str, float]]:
        dde = repair.top_dde.sel(layer=head[0], head=head[1])
        return [(c, float(dde.sel(component=c))) for c in top_repairers(repair, head, n)]

    return of


def atp_table(summary: xr.Dataset, n: int, repairers: Repairers | None = None) -> pd.DataFrame:
    """The n heads whose |effect| on their top tokens AtP under-estimates most (largest
    top_abs_shortfall), with the exact and estimated effects, self-repair and its parts, and
    who repairs them.

    Args:
        summary: atp_summary's result for one (model, ablation).
        n: rows.
        repairers: (layer, head) -> its top repairers (repairers_of), or None.
    """
    shortfall = summary.top_abs_shortfall.values
    order = [i for i in np.argsort(-np.nan_to_num(shortfall, nan=-np.inf), axis=None)[:n]]
    rows = []
    for flat in order:
        layer, head = np.unravel_index(flat, shortfall.shape)
        if not np.isfinite(shortfall[layer, head]):
            continue
        one = summary.isel(layer=layer, head=head)
        row = {"head": head_label(layer, head)}
        row |= {label: float(one[name]) for name, label in TABLE_COLUMNS.items()}
        row["in exact top k"] = bool(one.top_exact_top_k)
        row["missed by AtP"] = bool(one.top_missed_atp)
        row["missed by GradDrop"] = bool(one.top_missed_graddrop)
        if repairers is not None:
            row["top repairers (mean ΔDE on top tokens)"] = ", ".join(
                f"{c} ({v:+.3f})" for c, v in repairers((int(layer), int(head)))
            )
        rows.append(row)
    return pd.DataFrame(rows)


def atp_table_html(table: pd.DataFrame, note: str = "") -> str:
    """The table as a standalone HTML page: one table per model and ablation."""
    parts = []
    for (model, ablation), rows in table.groupby(["model", "ablation"], sort=False):
        parts.append(f"<h2>{html.escape(f'{model}, {ablation} ablation')}</h2>")
        shown = rows.drop(columns=["model", "ablation"]).round(4)
        parts.append(shown.to_html(index=False, classes="heads", border=0, escape=True))
    return html_page("Heads attribution patching under-estimates", note, parts)
