"""The attribution-patching figures and table (rules/atp.smk): atp_scatter and atp_error from
each model's atp summary under the figures' ablation, atp_table from every model and ablation's
(with who repairs whom, when it is measured). Runs in the analysis environment: no torch."""

from __future__ import annotations

import os
from collections.abc import Sequence
from functools import partial

import pandas as pd
from matplotlib.figure import Figure

from selfrepair.analysis import atp as judge
from selfrepair.plots import atp as draw
from selfrepair.plots.common import saved
from selfrepair.stages.store import open_by_model, open_zarr, write_text

__all__ = ["atp_error", "atp_scatter", "atp_table"]

Paths = Sequence[str | os.PathLike]


def _atp_figure(
    drawing, summaries: Paths, models: Sequence[str], top_fraction: float, out: Paths = ()
) -> Figure:
    """One of plots.atp's figures from each model's atp_summary store.

    Args:
        drawing: the plotting function (plots.atp.atp_scatter or atp_error).
        summaries: each model's atp_summary store (figures' ablation), in models' order.
        models: the models drawn.
        top_fraction: engine.top_fraction.
        out: the figure files to write.
    """
    return saved(drawing(open_by_model(summaries, models), top_fraction), out)


# AtP and GradDrop against the exact effect, one point per head, coloured by self-repair.
atp_scatter = partial(_atp_figure, draw.atp_scatter)
# AtP's error against the head's self-repair, one point per head.
atp_error = partial(_atp_figure, draw.atp_error)


def atp_table(
    summaries: Paths,
    repairs: Paths,
    runs: Sequence[Sequence[str]],
    table_heads: int,
    repairers: int,
    csv: str,
    html_path: str,
    note: str = "",
) -> pd.DataFrame:
    """Per model and ablation, the heads whose effect on their top tokens AtP under-estimates
    most, with their self-repair and (when who repairs whom is measured) top repairers.

    Args:
        summaries: the atp_summary stores, one per run.
        repairs: the repair_summary stores of the same runs, or none (attribution off).
        runs: [model, ablation] of each store.
        table_heads: rows per model and ablation.
        repairers: repairers named per head.
        csv, html_path: the files to write.
        note: a paragraph above the HTML tables.
    """
    if repairs and len(repairs) != len(summaries):
        raise ValueError(f"{len(repairs)} repair summaries for {len(summaries)} atp summaries")
    tables = []
    for i, (model, ablation) in enumerate(runs):
        summary = open_zarr(summaries[i]).load()
        named = judge.repairers_of(open_zarr(repairs[i]).load(), repairers) if repairs else None
        table = judge.atp_table(summary, table_heads, named).assign(model=model, ablation=ablation)
        tables.append(table[["model", "ablation", *table.columns[:-2]]])
    out = pd.concat(tables, ignore_index=True)
    write_text(csv, out.to_csv(index=False, float_format="%.6g"))
    write_text(html_path, judge.atp_table_html(out, note))
    return out
