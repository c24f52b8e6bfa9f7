"""The per-head summary table of every model and ablation of a run, from the per-head summaries
and intervals: a DataFrame (written as CSV, every column) and an HTML page for the report (the
columns a reader compares, with their intervals)."""

from __future__ import annotations

import html
from collections.abc import Sequence

import pandas as pd
import xarray as xr

from selfrepair.variables import METRIC_LABELS, head_label

__all__ = [
    "HTML_COLUMNS",
    "TABLE_COLUMNS",
    "head_table",
    "html_page",
    "table_html",
    "task_head_table",
]

TABLE_COLUMNS = (
    "mean_self_repair",
    "mean_logit_diff",
    "mean_de_clean",
    "mean_de_ablated",
    "top_self_repair",
    "top_sr_heads",
    "top_sr_mlps",
    "top_sr_ln",
    "top_logit_diff",
    "top_de_clean",
    "top_de_ablated",
    "top_ln_share_clipped",
    "top_ln_share",
    "top_n_tokens",
    "top_n_dropped",
    "top_threshold",
)


def head_table(
    summaries: dict[tuple[str, str], xr.Dataset],
    intervals: dict[tuple[str, str], xr.Dataset] | None = None,
) -> pd.DataFrame:
    """One row per (model, ablation, layer, head) that was measured: the per-head summary
    (self-repair, its decomposition, LN shares, token counts) and, from intervals, `<name>_low`
    and `<name>_high` bounds. Keys are (model, ablation)."""
    frames = []
    for (model, ablation), summary in summaries.items():
        columns = {}
        for name in TABLE_COLUMNS:
            columns[name] = summary[name].transpose("layer", "head")
            if intervals is not None and name in intervals[(model, ablation)]:
                bounds = intervals[(model, ablation)][name].transpose("layer", "head", "bound")
                columns[f"{name}_low"] = bounds.sel(bound="low", drop=True)
                columns[f"{name}_high"] = bounds.sel(bound="high", drop=True)
        frame = xr.Dataset(columns).to_dataframe().reset_index()
        frame = frame[frame.top_n_tokens > 0]  # heads not measured
        frame.insert(0, "ablation", ablation)
        frame.insert(0, "model", model)
        frame.insert(4, "n_tokens", int(summary.attrs["n_tokens"]))
        frames.append(frame)
    table = pd.concat(frames, ignore_index=True)
    order = ["model", "ablation", "layer", "head", "n_tokens"]
    table = table[order + [c for c in table.columns if c not in order]]
    return table.sort_values(["model", "ablation", "layer", "head"], ignore_index=True)


def task_head_table(
    task: str,
    metric: str,
    summaries: dict[tuple[str, str], xr.Dataset],
    intervals: dict[tuple[str, str], xr.Dataset] | None = None,
) -> pd.DataFrame:
    """head_table of one task's (model, ablation) summaries, over its answer positions, with
    the task and the metric every logit column is on (`metric`: logit_diff or correct_logit,
    `metric_is`: what that is, variables.METRIC_LABELS) after the model and ablation; top_* and
    mean_* both cover every answer (a task's selection is all its answers)."""
    if metric not in METRIC_LABELS:
        raise ValueError(f"unknown task metric {metric!r}: one of {', '.join(METRIC_LABELS)}")
    table = head_table(summaries, intervals)
    table.insert(2, "task", task)
    table.insert(3, "metric", metric)
    table.insert(4, "metric_is", METRIC_LABELS[metric])
    return table


HTML_COLUMNS = {  # column of the HTML table -> how it is made from the CSV's
    "head": lambda t: pd.Series(map(head_label, t["layer"], t["head"]), index=t.index),
    "self-repair, top tokens": lambda t: _with_interval(t, "top_self_repair"),
    "other heads": lambda t: _number(t["top_sr_heads"]),
    "MLP layers": lambda t: _number(t["top_sr_mlps"]),
    "final LayerNorm": lambda t: _number(t["top_sr_ln"]),
    "LN share of DE (clipped)": lambda t: _with_interval(t, "top_ln_share_clipped"),
    "LN share of DE (unclipped)": lambda t: _with_interval(t, "top_ln_share"),
    "dropped / top tokens": lambda t: (
        t["top_n_dropped"].astype(str) + " / " + t["top_n_tokens"].astype(str)
    ),
    "self-repair, all tokens": lambda t: _with_interval(t, "mean_self_repair"),
}

STYLE = """
table.heads { border-collapse: collapse; font: 13px sans-serif; margin-bottom: 1.5em; }
table.heads th, table.heads td { padding: 2px 8px; border-bottom: 1px solid #ddd; }
table.heads td { text-align: right; font-variant-numeric: tabular-nums; }
table.heads th { background: #f3f3f3; position: sticky; top: 0; }
"""


def _number(values: pd.Series) -> pd.Series:
    return values.map(lambda v: f"{v:.3f}")


def _with_interval(table: pd.DataFrame, name: str) -> pd.Series:
    """'0.123 [0.100, 0.150]' (the interval when the table has it)."""
    text = _number(table[name])
    if f"{name}_low" in table:
        text = text + " [" + _number(table[f"{name}_low"]) + ", "
        text = text + _number(table[f"{name}_high"]) + "]"
    return text


def html_page(title: str, note: str, sections: Sequence[str]) -> str:
    """A standalone HTML page (the tables' style) with a title, a note and the sections."""
    parts = [
        "<!DOCTYPE html><html><head><meta charset='utf-8'>",
        f"<title>{html.escape(title)}</title><style>{STYLE}</style></head><body>",
        f"<h1>{html.escape(title)}</h1>",
        f"<p>{html.escape(note)}</p>" if note else "",
        *sections,
        "</body></html>",
    ]
    return "\n".join(parts)


def table_html(table: pd.DataFrame, note: str = "", title: str = "Per-head self-repair") -> str:
    """A standalone HTML page: one table per (model, ablation), heads in layer order."""
    parts = []
    for (model, ablation), rows in table.groupby(["model", "ablation"], sort=True):
        shown = pd.DataFrame({col: make(rows) for col, make in HTML_COLUMNS.items()})
        n_tokens = int(rows["n_tokens"].iloc[0])
        parts.append(f"<h2>{html.escape(model)}, {html.escape(ablation)} ablation</h2>")
        unit = f"the {rows['metric_is'].iloc[0]}" if "metric_is" in rows else "logits"
        parts.append(f"<p>{len(rows)} heads, {n_tokens:,} tokens; values in {unit}.</p>")
        parts.append(shown.to_html(index=False, classes="heads", border=0, escape=True))
    return html_page(title, note, parts)
