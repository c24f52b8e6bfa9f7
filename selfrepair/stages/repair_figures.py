"""The who-repairs-whom figures and table (rules/attribution.smk): repair_heatmap, repair_bars,
repair_scatter and repair_graph, from each model's repair summary and per-token detail under
the figures' ablation; repair_heatmap and repair_bars on a task's answers too (rules
task_repairer_heatmap, task_repair_bars). Runs in the analysis environment: no torch here."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence

import pandas as pd
import xarray as xr
from matplotlib.figure import Figure

from selfrepair.analysis import attribution as repair
from selfrepair.analysis.tasks import SHARE_LIMIT, small_self_repair
from selfrepair.plots import repair as draw
from selfrepair.plots.common import saved, titled
from selfrepair.stages.store import open_by_model, write_text
from selfrepair.stages.summaries import task_title
from selfrepair.variables import head_label

__all__ = ["repair_bars", "repair_graph", "repair_heatmap", "repair_scatter", "repairer_table"]

Paths = Sequence[str | os.PathLike]
ANSWERS = "the task's answers"  # a task's selection: every answer


def repair_heatmap(
    summaries: Paths,
    models: Sequence[str],
    top_fraction: float,
    out: Paths = (),
    task: Mapping[str, str] | None = None,
) -> Figure:
    """Share of each ablated head's self-repair on its top tokens taken by each component; on a
    task (rule task_repairer_heatmap) on its answers, the heads of near-zero self-repair masked
    (analysis.tasks.small_self_repair), the shares clipped to +-SHARE_LIMIT, titled with the
    clean metric.

    Args:
        summaries: each model's repair_summary store (figures' ablation), in models' order.
        models: the models drawn.
        top_fraction: engine.top_fraction.
        out: the figure files to write.
        task: a task's name, ablation and metric JSON (summaries.task_title), or None.
    """
    sums = open_by_model(summaries, models)
    shares = {m: ds.top_share for m, ds in sums.items()}
    if task is None:
        return saved(draw.repair_heatmap(shares, top_fraction), out)
    masked = {m: small_self_repair(ds.top_self_repair) for m, ds in sums.items()}
    fig = draw.repair_heatmap(shares, selection=ANSWERS, masked=masked, limit=SHARE_LIMIT)
    return saved(titled(fig, task_title(task, models[0])), out)


def repairer_table(
    summary: xr.Dataset, detail: xr.Dataset, head: tuple[int, int], n: int, bootstrap: dict
) -> pd.DataFrame:
    """A head's n top repairers: component, kind, mean dDE on its top tokens, interval."""
    comps = repair.top_repairers(summary, head, n)
    ci = repair.repair_intervals(detail, head, comps, **bootstrap)
    one = summary.sel(layer=head[0], head=head[1], component=comps)
    return pd.DataFrame(
        {
            "component": comps,
            "kind": [str(k) for k in one.component_kind.values],
            "top_dde": one.top_dde.values,
            "ci_low": ci.sel(bound="low").values,
            "ci_high": ci.sel(bound="high").values,
        }
    )


def repair_bars(
    summaries: Paths,
    details: Paths,
    models: Sequence[str],
    most_repaired: int,
    repairers: int,
    bootstrap: dict,
    top_fraction: float,
    out: Paths = (),
    task: Mapping[str, str] | None = None,
) -> Figure:
    """The top repairers of each model's most self-repaired heads, with bootstrap intervals; on
    a task (rule task_repair_bars) over its answers, titled with the clean metric.

    Args:
        summaries: each model's repair_summary store, in models' order.
        details: each model's repair_detail store (it holds the most repaired heads).
        models: the models drawn.
        most_repaired: heads per model.
        repairers: bars per head.
        bootstrap: n_resamples, level and seed of the intervals.
        top_fraction: engine.top_fraction.
        out: the figure files to write.
        task: a task's name, ablation and metric JSON (summaries.task_title), or None.
    """
    sums, dets = open_by_model(summaries, models), open_by_model(details, models)
    panels = []
    for model in models:
        for head in repair.most_repaired(sums[model], most_repaired):
            one = sums[model].sel(layer=head[0], head=head[1])
            panels.append(
                {
                    "model": model,
                    "head": head_label(*head),
                    "self_repair": float(one.top_self_repair),
                    "repairers": repairer_table(
                        sums[model], dets[model], head, repairers, bootstrap
                    ),
                }
            )
    selection = None if task is None else ANSWERS
    fig = draw.repair_bars(panels, top_fraction, bootstrap["level"], selection)
    return saved(fig if task is None else titled(fig, task_title(task, models[0])), out)


def repair_scatter(
    summaries: Paths, details: Paths, models: Sequence[str], top_fraction: float, out: Paths = ()
) -> Figure:
    """Per model, the top repairer (a head or an MLP layer, analysis.attribution.repair_pair)
    of its most self-repaired head against that head's drop in direct effect, per top token.

    Args:
        summaries: each model's repair_summary store, in models' order.
        details: each model's repair_detail store.
        models: the models drawn.
        top_fraction: engine.top_fraction.
        out: the figure files to write.
    """
    sums, dets = open_by_model(summaries, models), open_by_model(details, models)
    panels = []
    for model in models:
        head, repairer = repair.repair_pair(sums[model])
        one = repair.head_detail(dets[model], head)
        panels.append(
            {
                "model": model,
                "head": head_label(*head),
                "repairer": repairer,
                "de_drop": (one.de_clean - one.de_ablated).values,
                "dde": one.dde.sel(component=repairer).values,
            }
        )
    return saved(draw.repair_scatter(panels, top_fraction), out)


def repair_graph(
    summaries: Paths,
    details: Paths,
    models: Sequence[str],
    repairers: int,
    bootstrap: dict,
    csv: str,
    html_path: str,
    note: str = "",
) -> pd.DataFrame:
    """The repair graph: every measured head's top repairers (mean dDE on its top tokens, share
    of its self-repair; bootstrap intervals for the heads kept per token), as CSV and HTML.

    Args:
        summaries: each model's repair_summary store, in models' order.
        details: each model's repair_detail store.
        models: the models listed.
        repairers: rows per head.
        bootstrap: n_resamples, level and seed of the intervals.
        csv, html_path: the files to write.
        note: a paragraph above the HTML tables.
    """
    sums, dets = open_by_model(summaries, models), open_by_model(details, models)
    tables = []
    for model in models:
        kept = {(int(h[0]), int(h[1])) for h in dets[model].attrs["heads"]}
        intervals = {
            head: repair.repair_intervals(
                dets[model], head, repair.top_repairers(sums[model], head, repairers), **bootstrap
            )
            for head in sorted(kept)
        }
        table = repair.repair_graph(sums[model], repairers, intervals)
        tables.append(table.assign(model=model)[["model", *table.columns]])
    graph = pd.concat(tables, ignore_index=True)
    write_text(csv, graph.to_csv(index=False, float_format="%.6g"))
    write_text(html_path, repair.repair_graph_html(graph, note))
    return graph
