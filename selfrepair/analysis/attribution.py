"""Reductions of who repairs whom (engine.attribution): each head's top tokens as global token
numbers (chosen once from the clean cache, before any ablation), the per-shard sums added into
per-(head, component) means and shares, the check that the components add up to the head's
self-repair, and the rankings, bootstrap intervals and table the figures and report show.

No I/O and no torch: the analysis environment runs these.
"""

from __future__ import annotations

import html
from collections.abc import Sequence

import numpy as np
import pandas as pd
import xarray as xr

from selfrepair.analysis.intervals import bootstrap_means, percentile_interval
from selfrepair.analysis.reduce import top_token_mask
from selfrepair.analysis.tables import html_page
from selfrepair.variables import REPAIR_TOTALS, head_label

__all__ = [
    "SELECTIONS",
    "checked_repair_summary",
    "combine_sums",
    "count_problem",
    "head_detail",
    "head_repairers",
    "measured_heads",
    "most_repaired",
    "repair_graph",
    "repair_graph_html",
    "repair_intervals",
    "repair_pair",
    "repair_summary",
    "shard_top_mask",
    "sum_errors",
    "top_counts",
    "top_repairers",
    "top_token_indices",
]

SELECTIONS = ("all", "top")  # every token, each head's top tokens by clean direct effect


def top_token_indices(de_head: xr.DataArray, fraction: float) -> xr.DataArray:
    """Each head's top tokens (reduce.top_token_mask: the same tokens summarize_heads takes) as
    global token numbers (row * n_pos + pos over all shards in order), dims layer, head, rank.

    Args:
        de_head: clean direct effects (layer, head, batch, pos), e.g. every clean shard opened
            together; read one layer at a time.
        fraction: engine.top_fraction.
    """
    layers = []
    for i in range(de_head.sizes["layer"]):
        mask = top_token_mask(de_head.isel(layer=[i]).load(), fraction).values[0]  # [head, tok]
        layers.append(np.stack([np.flatnonzero(m) for m in mask]))
    return xr.DataArray(np.stack(layers).astype(np.int64), dims=("layer", "head", "rank"))


def measured_heads(heads: Sequence[Sequence[int]] | None, shape: tuple[int, int]) -> np.ndarray:
    """bool [layer, head]: the heads of a model entry's `heads` list (None: every head)."""
    if heads is None:
        return np.ones(shape, bool)
    mask = np.zeros(shape, bool)
    for layer, head in heads:
        mask[layer, head] = True
    return mask


def shard_top_mask(indices: np.ndarray, start_row: int, n_rows: int, n_pos: int) -> np.ndarray:
    """bool [layer, head, n_rows, n_pos]: the top tokens (top_token_indices) that fall in rows
    [start_row, start_row + n_rows)."""
    n_layers, n_heads, _ = indices.shape
    mask = np.zeros((n_layers, n_heads, n_rows * n_pos), bool)
    local = indices - start_row * n_pos
    inside = (local >= 0) & (local < n_rows * n_pos)
    layer, head, _ = np.nonzero(inside)
    mask[layer, head, local[inside]] = True
    return mask.reshape(n_layers, n_heads, n_rows, n_pos)


def combine_sums(shards: Sequence[xr.Dataset]) -> xr.Dataset:
    """The per-shard sums (RepairSums.dataset) of one (model, ablation) added over shards."""
    first = shards[0]
    summed = {
        name: sum(ds[name] for ds in shards) for name in first.data_vars if name != "downstream"
    }
    return xr.Dataset(summed | {"downstream": first.downstream}, attrs=dict(first.attrs))


def count_problem(sums: xr.Dataset, n_all: int, n_top: int, source: str) -> str | None:
    """Why the sums are not one pass over every token of the run (None when they are): each
    measured head must have summed over n_all tokens and over exactly its n_top top tokens; a
    shard missing, repeated or taken from another run changes one of the two.

    Args:
        sums: combine_sums of the run's attribution stores.
        n_all, n_top: the tokens and top tokens per head (running text: head_top_tokens' n_tokens
            and rank, top_counts; a task: its answers, each a top token).
        source: where the two numbers come from, for the message.
    """
    measured = sums.n_all.values > 0
    for name, want in (("n_all", n_all), ("n_top", n_top)):
        got = sums[name].values[measured]
        if (got != want).any():
            odd = int(got[got != want][0])
            return (
                f"the stores summed {odd} tokens where {name} must be {want} for every "
                f"measured head ({source})"
            )
    return None


def top_counts(top_tokens: xr.Dataset) -> tuple[int, int, str]:
    """count_problem's (n_all, n_top, source) of running text: the head_top_tokens store's."""
    n_tokens, n_top = int(top_tokens.attrs["n_tokens"]), int(top_tokens.sizes["rank"])
    return n_tokens, n_top, f"head_top_tokens: {n_top} top tokens of {n_tokens}"


def repair_summary(sums: xr.Dataset) -> xr.Dataset:
    """Per (ablated head, component): the mean change of direct effect over all tokens (`all_dde`)
    and over the head's top tokens (`top_dde`), NaN where the component does not read the head;
    the same means of REPAIR_TOTALS (`top_self_repair`, ...); and each component's share of the
    head's self-repair on its top tokens (`top_share` = top_dde / top_self_repair)."""
    out = {}
    down = sums.downstream.broadcast_like(sums.sum_all_dde)
    for sel in SELECTIONS:
        n = sums[f"n_{sel}"].where(sums[f"n_{sel}"] > 0)
        out[f"{sel}_dde"] = (sums[f"sum_{sel}_dde"] / n).where(down)
        for name in REPAIR_TOTALS:
            out[f"{sel}_{name}"] = sums[f"sum_{sel}_{name}"] / n
        out[f"n_{sel}"] = sums[f"n_{sel}"]
    out["top_share"] = out["top_dde"] / out["top_self_repair"]
    out["downstream"] = sums.downstream
    return xr.Dataset(out, attrs=dict(sums.attrs))


def checked_repair_summary(sums: xr.Dataset, tolerance: float) -> tuple[xr.Dataset, dict]:
    """repair_summary of sums and its sum_errors, refused (ArithmeticError) when the components
    miss the totals by more than tolerance (logits): running text's and a task's alike."""
    summary = repair_summary(sums)
    errors = sum_errors(summary)
    if not max(errors.values()) <= tolerance:
        raise ArithmeticError(
            f"the components' changes of direct effect miss the self-repair by "
            f"{max(errors.values()):.3g} > {tolerance}: {errors}"
        )
    return summary, errors


def sum_errors(summary: xr.Dataset) -> dict[str, float]:
    """Largest |sum of components - total| over measured heads: heads' and MLPs' terms against
    sr_heads + sr_mlps, and every term (LayerNorm's too) against self_repair, per selection."""
    kind = summary.component_kind
    errors = {}
    for sel in SELECTIONS:
        dde = summary[f"{sel}_dde"]
        inner = dde.where(kind != "ln").sum("component")
        total = dde.sum("component")
        errors[f"{sel}_heads_mlps"] = _max_abs(
            inner - summary[f"{sel}_sr_heads"] - summary[f"{sel}_sr_mlps"]
        )
        errors[f"{sel}_total"] = _max_abs(total - summary[f"{sel}_self_repair"])
    return errors


def _max_abs(x: xr.DataArray) -> float:
    values = np.abs(x.values)
    return float(np.nanmax(values)) if np.isfinite(values).any() else 0.0


def most_repaired(summary: xr.Dataset, n: int) -> list[tuple[int, int]]:
    """The n measured heads with the largest mean self-repair on their top tokens."""
    sr = summary.top_self_repair.values
    order = np.argsort(-np.where(np.isnan(sr), -np.inf, sr), axis=None, kind="stable")
    heads = [np.unravel_index(i, sr.shape) for i in order if not np.isnan(sr.flat[i])]
    return [(int(layer), int(head)) for layer, head in heads[:n]]


def top_repairers(
    summary: xr.Dataset,
    head: tuple[int, int],
    n: int,
    kinds: Sequence[str] = ("head", "mlp", "ln"),
) -> list[str]:
    """The n components (of these kinds) with the largest mean change of direct effect on the
    head's top tokens (the most positive: repairing), in that order."""
    dde = summary.top_dde.sel(layer=head[0], head=head[1])
    values = np.where(np.isnan(dde.values), -np.inf, dde.values)
    values[~np.isin(summary.component_kind.values, list(kinds))] = -np.inf
    order = np.argsort(-values, kind="stable")[:n]
    return [str(dde.component.values[i]) for i in order if np.isfinite(values[i])]


def repair_pair(summary: xr.Dataset) -> tuple[tuple[int, int], str]:
    """The pair the per-token scatter shows: the most self-repaired head that another head or
    an MLP layer repairs, with its top such repairer (the final LayerNorm's part is the
    paper's own figures'); the most self-repaired head and LN when no head has one (only
    last-layer heads measured)."""
    ranked = most_repaired(summary, summary.sizes["layer"] * summary.sizes["head"])
    if not ranked:
        raise ValueError("no head was measured in this repair summary")
    for head in ranked:
        repairers = top_repairers(summary, head, 1, kinds=("head", "mlp"))
        if repairers:
            return head, repairers[0]
    return ranked[0], "LN"


def repair_intervals(
    detail: xr.Dataset,
    head: tuple[int, int],
    components: Sequence[str],
    n_resamples: int,
    level: float,
    seed: int,
) -> xr.DataArray:
    """Percentile bootstrap intervals (component, bound) of the components' mean change of
    direct effect over the head's top tokens, from the per-token detail store."""
    values = head_detail(detail, head).dde.sel(component=list(components))
    means = bootstrap_means(values.transpose("component", "token").values, n_resamples, seed)
    bounds = percentile_interval(means, level)
    return xr.DataArray(
        bounds,
        dims=("component", "bound"),
        coords={"component": list(components), "bound": ["low", "high"]},
    )


def head_detail(detail: xr.Dataset, head: tuple[int, int]) -> xr.Dataset:
    """The per-token detail (repair_detail's store) of one ablated head: its top tokens."""
    mine = (detail.ablated_layer.values == head[0]) & (detail.ablated_head.values == head[1])
    if not mine.any():
        raise ValueError(f"{head_label(*head)} has no per-token detail in this store")
    return detail.isel(token=np.flatnonzero(mine))


def repair_graph(
    summary: xr.Dataset,
    n_repairers: int,
    intervals: dict[tuple[int, int], xr.DataArray] | None = None,
) -> pd.DataFrame:
    """One row per (ablated head, repairer) for each measured head's n_repairers top repairers:
    mean dDE on the head's top tokens, its share of the head's self-repair, the head's
    self-repair, and the bootstrap interval where `intervals` has the head."""
    rows = []
    intervals = intervals or {}
    for layer in summary["layer"].values:
        for head in summary["head"].values:
            one = summary.sel(layer=layer, head=head)
            if not np.isfinite(float(one.top_self_repair)):
                continue
            ci = intervals.get((int(layer), int(head)))
            for comp in top_repairers(summary, (int(layer), int(head)), n_repairers):
                low, high = (np.nan, np.nan) if ci is None else ci.sel(component=comp).values
                rows.append(
                    {
                        "ablated_head": head_label(layer, head),
                        "repairer": comp,
                        "top_dde": float(one.top_dde.sel(component=comp)),
                        "top_share": float(one.top_share.sel(component=comp)),
                        "all_dde": float(one.all_dde.sel(component=comp)),
                        "head_top_self_repair": float(one.top_self_repair),
                        "ci_low": float(low),
                        "ci_high": float(high),
                    }
                )
    return pd.DataFrame(rows)


def repair_graph_html(table: pd.DataFrame, note: str = "") -> str:
    """The repair graph as a standalone HTML page: one table per model, heads in layer order."""
    parts = []
    for model, rows in table.groupby("model", sort=False):
        parts.append(f"<h2>{html.escape(str(model))}</h2>")
        shown = rows.drop(columns=["model"]).round(4)
        parts.append(shown.to_html(index=False, classes="heads", border=0, escape=True))
    return html_page("Who repairs whom", note, parts)


def head_repairers(summary: xr.Dataset, n: int, digits: int = 4) -> dict[str, list[dict]]:
    """'L.H' -> the head's n top repairers (component, mean dDE on its top tokens, share of its
    self-repair), for every measured head: what the head explorer lists."""
    out = {}
    for layer in summary["layer"].values:
        for head in summary["head"].values:
            one = summary.sel(layer=layer, head=head)
            if not np.isfinite(float(one.top_self_repair)):
                continue
            out[f"{layer}.{head}"] = [
                {
                    "component": comp,
                    "top_dde": _rounded(one.top_dde.sel(component=comp), digits),
                    "top_share": _rounded(one.top_share.sel(component=comp), digits),
                }
                for comp in top_repairers(summary, (int(layer), int(head)), n)
            ]
    return out


def _rounded(x: xr.DataArray, digits: int) -> float | None:
    value = float(x)
    return float(f"{value:.{digits}g}") if np.isfinite(value) else None
