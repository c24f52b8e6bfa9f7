"""The task figures (rules/tasks.smk), one (model, task) each under the task's first ablation:
Fig 1 and Fig 2 on the task's answer positions (task_self_repair_per_head,
task_de_vs_metric_drop) and who repairs whom there (task_repairer_heatmap, task_repair_bars).
Each figure's title states the clean metric, so a reader sees whether the model solves the task
at all. Runs in the analysis environment: no torch here."""

from __future__ import annotations

import os
import textwrap
from collections.abc import Sequence
from typing import Any

from matplotlib.figure import Figure

from selfrepair.analysis import attribution as repair
from selfrepair.analysis.reduce import head_effect_drops
from selfrepair.analysis.tasks import SHARE_LIMIT, small_self_repair
from selfrepair.plots import repair as draw
from selfrepair.plots.captions import unsolved_note
from selfrepair.plots.common import save_figure
from selfrepair.plots.effects import heads_de_vs_logit_drop
from selfrepair.plots.per_head import per_head_by_depth
from selfrepair.plots.style import with_unit
from selfrepair.stages.records import read_json
from selfrepair.stages.repair_figures import repairer_table
from selfrepair.stages.store import open_zarr
from selfrepair.variables import head_label

__all__ = [
    "headline",
    "task_de_vs_metric_drop",
    "task_repair_bars",
    "task_repairer_heatmap",
    "task_self_repair_per_head",
]

Paths = Sequence[str | os.PathLike]
ANSWERS = "the task's answers"
MIN_WIDTH = 6.5  # inches
SQUARE_WIDTH = 5.2  # one square panel (equal axes) and its colour bar


def headline(model: str, task: str, ablation: str, metric: str | os.PathLike) -> str:
    """A figure's title: model, task, ablation and the clean metric (task_clean's JSON, checked:
    records.read_json), led by 'the clean model does not solve this task' where it does not
    (plots.captions.unsolved_note)."""
    numbers: dict[str, Any] = read_json(metric)
    note = unsolved_note(numbers)
    text = f"{note[0].upper()}{note[1:]}. " if note else ""
    text += f"{model} on {task}, {ablation} ablation. Clean: mean {numbers['label']} "
    text += f"{numbers['mean']:.3g}" + ("" if note else f", answer top-1 {numbers['top1']:.0%}")
    if "above_counterfactual" in numbers:
        text += f", above counterfactual {numbers['above_counterfactual']:.0%}"
    return text


def _saved(fig: Figure, title: str, out: Paths, min_width: float = MIN_WIDTH) -> Figure:
    width, height = fig.get_size_inches()
    if width < min_width:  # one panel: room for the title and the long axis labels
        width, height = min_width, height + 1.0
        fig.set_size_inches(width, height)
    fig.suptitle(textwrap.fill(title, int(width * 13)), fontsize=9)  # 13 characters an inch
    if out:
        save_figure(fig, *out)
    return fig


def task_self_repair_per_head(
    summary: str,
    intervals: str,
    metric: str,
    model: str,
    task: str,
    ablation: str,
    out: Paths = (),
) -> Figure:
    """Fig 1 on a task: each head's mean self-repair over the task's answers, by relative depth,
    with its bootstrap interval over the answers.

    Args:
        summary, intervals: the task_summary stores of the figures' ablation.
        metric: the task_clean metric JSON.
        model, task, ablation: what is drawn.
        out: the figure files to write.
    """
    fig = per_head_by_depth(
        {model: open_zarr(summary)},
        "top_self_repair",
        with_unit("mean self-repair on the answers"),
        intervals={model: open_zarr(intervals).top_self_repair},
    )
    return _saved(fig, headline(model, task, ablation, metric), out)


def task_de_vs_metric_drop(
    summary: str, metric: str, model: str, task: str, ablation: str, out: Paths = ()
) -> Figure:
    """Fig 2 on a task: each head's mean drop of direct effect against the mean drop of the
    task's metric, over its answers.

    Args:
        summary: the task_summary store of the figures' ablation.
        metric: the task_clean metric JSON.
        model, task, ablation: what is drawn.
        out: the figure files to write.
    """
    fig = heads_de_vs_logit_drop(
        {model: head_effect_drops(open_zarr(summary), "top")},
        ylabel=with_unit("mean drop of the metric"),
    )
    # Less wide than MIN_WIDTH: a wider figure left its square panel in empty space.
    return _saved(fig, headline(model, task, ablation, metric), out, min_width=SQUARE_WIDTH)


def task_repairer_heatmap(
    repairs: str, metric: str, model: str, task: str, ablation: str, out: Paths = ()
) -> Figure:
    """Who repairs whom on a task: each component's share of each head's self-repair over the
    task's answers, clipped to +-SHARE_LIMIT, the heads of near-zero self-repair masked
    (analysis.tasks.small_self_repair).

    Args:
        repairs: the task's repair summary (task_summary) of the figures' ablation.
        metric: the task_clean metric JSON.
        model, task, ablation: what is drawn.
        out: the figure files to write.
    """
    summary = open_zarr(repairs)
    fig = draw.repair_heatmap(
        {model: summary.top_share},
        selection=ANSWERS,
        masked={model: small_self_repair(summary.top_self_repair)},
        limit=SHARE_LIMIT,
    )
    return _saved(fig, headline(model, task, ablation, metric), out)


def task_repair_bars(
    repairs: str,
    detail: str,
    metric: str,
    model: str,
    task: str,
    ablation: str,
    most_repaired: int,
    repairers: int,
    bootstrap: dict,
    out: Paths = (),
) -> Figure:
    """The top repairers of a task's most self-repaired heads, with bootstrap intervals over
    the task's answers.

    Args:
        repairs: the task's repair summary of the figures' ablation.
        detail: its per-answer detail (every measured head).
        metric: the task_clean metric JSON.
        model, task, ablation: what is drawn.
        most_repaired: heads drawn.
        repairers: bars per head.
        bootstrap: n_resamples, level and seed of the intervals.
        out: the figure files to write.
    """
    summary, per_token = open_zarr(repairs), open_zarr(detail)
    panels = []
    for head in repair.most_repaired(summary, most_repaired):
        one = summary.sel(layer=head[0], head=head[1])
        panels.append(
            {
                "model": model,
                "head": head_label(*head),
                "self_repair": float(one.top_self_repair),
                "repairers": repairer_table(summary, per_token, head, repairers, bootstrap),
            }
        )
    fig = draw.repair_bars(panels, level=bootstrap["level"], selection=ANSWERS)
    return _saved(fig, headline(model, task, ablation, metric), out)
