"""The task rules that reduce (rules/tasks.smk): task_summary (per-head summary, bootstrap
intervals and who-repairs-whom summary of one ablation over the task's answer positions) and
task_backups (the backup-heads table: the largest heads' top compensators, and each jointly
ablated set's ranked compensators with their ROC-AUC against the expected backups). Runs in the
analysis environment: no torch here."""

from __future__ import annotations

import html
import logging
from collections.abc import Mapping, Sequence
from typing import Any

import pandas as pd
import xarray as xr

from selfrepair.analysis import attribution, tables
from selfrepair.analysis import intervals as bootstrap
from selfrepair.analysis.tasks import head_backups, no_backup_notes, set_backups, set_tie_notes
from selfrepair.stages.joblog import SAME_WEIGHTS_KEYS, provenance, revision_of
from selfrepair.stages.records import read_json
from selfrepair.stages.store import (
    DamagedStore,
    check_same_run,
    open_zarr,
    rebuild_hint,
    write_text,
    write_zarr,
)

__all__ = [
    "TASK_TOP_FRACTION",
    "expected_heads",
    "set_heads",
    "task_backups",
    "task_head_table",
    "task_summary",
]

log = logging.getLogger("selfrepair")

# A task's selection is its answer positions, all of them: the summaries' "top" tokens and the
# repair sums' are every answer (analysis.reduce with this fraction keeps every token).
TASK_TOP_FRACTION = 1.0


def _repair_summary(sums_path: str, n_answers: int, tolerance: float) -> xr.Dataset:
    """The repair summary of one task ablation, refused when a measured head did not sum over
    every answer once or the components miss the totals."""
    sums = attribution.combine_sums([open_zarr(sums_path).load()])
    measured = sums.n_all.values > 0
    for name in ("n_all", "n_top"):
        got = sums[name].values[measured]
        if (got != n_answers).any():
            raise DamagedStore(
                f"{sums_path} is damaged: a head summed {int(got[got != n_answers][0])} "
                f"answers ({name}) where the task has {n_answers}; {rebuild_hint(sums_path)}"
            )
    summary = attribution.repair_summary(sums)
    errors = attribution.sum_errors(summary)
    if not max(errors.values()) <= tolerance:
        raise ArithmeticError(
            f"the components' changes of direct effect miss the self-repair by "
            f"{max(errors.values()):.3g} > {tolerance}: {errors}"
        )
    summary.attrs = {**sums.attrs, **{f"max_error_{k}": v for k, v in errors.items()}}
    return summary


def task_summary(
    *,
    ablation_store: str,
    sums: str,
    de_epsilon: float,
    n_resamples: int,
    level: float,
    seed: int,
    out: str,
    intervals_out: str,
    repair_out: str,
    attrs: dict[str, Any],
    tolerance: float = 1e-4,
) -> xr.Dataset:
    """Rule task_summary: per head, the means over the task's answers (reduce.head_summary with
    every answer as its top tokens), their bootstrap intervals over the answers, and the
    who-repairs-whom summary (analysis.attribution.repair_summary).

    Args:
        ablation_store: the task_ablate store of this (model, task, ablation).
        sums: its attribution sums store.
        de_epsilon: answers with a clean DE at most this are left out of the LayerNorm share.
        n_resamples, level, seed: the bootstrap's.
        out, intervals_out, repair_out: the stores to write (summary/, intervals/, and
            attribution/<ablation>.zarr under results/<model>/tasks/<task>/).
        attrs: the rule's provenance attributes.
        tolerance: the largest |sum of components - total| accepted (logits).
    """
    data = open_zarr(ablation_store)
    check_same_run([ablation_store, sums], [data, open_zarr(sums)])
    own = provenance(**attrs, model_revision=revision_of(data), **_task_attrs(data))
    summary, result = bootstrap.summary_and_intervals(
        data,
        top_fraction=TASK_TOP_FRACTION,
        de_epsilon=de_epsilon,
        n_resamples=n_resamples,
        level=level,
        seed=seed,
    )
    summary.attrs.update(own)
    result.attrs.update(own)
    repairs = _repair_summary(sums, data.sizes["token"], tolerance)
    repairs.attrs.update(own)
    write_zarr(summary, out)
    write_zarr(result, intervals_out)
    write_zarr(repairs, repair_out)
    return summary


def _task_attrs(ds: xr.Dataset) -> dict[str, Any]:
    return {k: ds.attrs[k] for k in ("metric", "ablation") if k in ds.attrs}


# Not CoAx's score (analysis.tasks): a head's change of direct effect, tied at 0 upstream.
SET_SECTION = (
    "sets ablated jointly: each head's joint-set direct-effect rise (its mean change of direct "
    "effect), ranked against the expected backups; heads at or below the set's first layer tie "
    "at 0, which caps the ROC-AUC at roc_auc_cap"
)


def task_head_table(
    *,
    model: str,
    task: str,
    ablations: Sequence[str],
    summaries: Sequence[str],
    intervals: Sequence[str],
    csv: str,
    html_path: str,
    note: str = "",
) -> pd.DataFrame:
    """Rule task_head_table: the per-head table of one (model, task), every ablation of the
    task, as CSV (head_summary.csv's columns, with the task and the metric its logit columns
    are on, as the stores record it) and HTML (analysis.tables.task_head_table).

    Args:
        model, task: the wildcards.
        ablations: the task's ablations, of summaries[i] and intervals[i].
        summaries, intervals: the task_summary stores of each ablation.
        csv, html_path: the files to write.
        note: a paragraph above the HTML tables.
    """
    if not len(ablations) == len(summaries) == len(intervals):
        raise ValueError("give one summary and one interval store per ablation")
    opened = [open_zarr(p) for p in summaries]
    check_same_run(list(summaries), opened, SAME_WEIGHTS_KEYS)
    metrics = {ds.attrs.get("metric") for ds in opened}
    if len(metrics) != 1:
        raise DamagedStore(
            f"the task's summaries {list(summaries)} are on different metrics {sorted(map(str, metrics))}; "
            f"{rebuild_hint(summaries[0])}"
        )
    keys = [(model, a) for a in ablations]
    table = tables.task_head_table(
        task,
        metrics.pop(),
        dict(zip(keys, opened, strict=True)),
        {k: open_zarr(p) for k, p in zip(keys, intervals, strict=True)},
    )
    write_text(csv, table.to_csv(index=False, float_format="%.6g"))
    title = f"Per-head self-repair: {model} on {task}"
    write_text(html_path, tables.table_html(table, note, title))
    return table


def expected_heads(expected: Sequence | Mapping[str, float], metric: str) -> list[list[int]]:
    """tasks.<task>.expected_backups as heads: those listed, or for {induction_score_above: s}
    the heads whose induction score (task_clean's metric.json, `metric`) is above s."""
    if not isinstance(expected, Mapping):
        return [list(h) for h in expected]
    from selfrepair.tasks.induction import induction_heads

    scores = read_json(metric)["induction_scores"]
    return induction_heads(scores, float(expected["induction_score_above"]))


def set_heads(sets: Mapping[str, Any], metric: str | None) -> dict[str, list[list[int]]]:
    """tasks.<task>.ablation_sets as heads: each set as listed, or for {induction_score_top: k}
    the k heads with the largest induction score in task_clean's metric.json (`metric`)."""
    from selfrepair.tasks.induction import strongest_induction_heads

    picked = [name for name, heads in sets.items() if isinstance(heads, Mapping)]
    scores = read_json(metric)["induction_scores"] if picked else None
    return {
        name: strongest_induction_heads(scores, int(heads["induction_score_top"]))
        if name in picked
        else [list(h) for h in heads]
        for name, heads in sets.items()
    }


def task_backups(
    *,
    summary: str,
    repairs: str,
    sets: Sequence[str],
    expected: Sequence[Sequence[int]] | Mapping[str, float],
    roles: Mapping[str, Sequence[Sequence[int]]],
    n_heads: int,
    n_backups: int,
    csv: str,
    html_path: str,
    title: str = "Backup heads",
    note: str = "",
    bootstrap: Mapping[str, Any] | None = None,
    metric: str = "",
) -> pd.DataFrame:
    """Rule task_backups: the backup-heads table of one (model, task) under the figures'
    ablation, as CSV (every row) and HTML (one table per part).

    Args:
        summary, repairs: the task_summary stores (per-head summary, repair summary).
        sets: the task_set_ablate store, when the task names ablation sets (else empty).
        expected: the expected backups (tasks.<task>.expected_backups, as expected_heads
            reads it).
        metric: the task's metric.json (task_clean's; the induction scores).
        roles: role -> heads named in the table (sets and expected backups are named too).
        n_heads: heads with the largest direct effect listed (tasks.<task>.backup_heads).
        n_backups: compensating heads per ablated head or set (figures.attribution.repairers).
        csv, html_path: the files to write.
        title: the HTML page's title (the model and task).
        note: a paragraph above the HTML tables (followed by a sentence for each head with no
            backup heads, e.g. one in the last layer, and for each set the heads its scores
            tie at 0 with the ROC-AUC cap they leave).
        bootstrap: n_resamples, level, seed of the joint ranking's ROC-AUC interval over the
            prompts (None: no interval).
    """
    expected = expected_heads(expected, metric)
    paths = [summary, repairs, *sets[:1]]
    summary_ds, repair, *rest = opened = [open_zarr(p) for p in paths]
    check_same_run(paths, opened, SAME_WEIGHTS_KEYS)
    sets_ds = rest[0] if rest else None
    names = {f"set {n}": h for n, h in (sets_ds.attrs["sets"] if sets else {}).items()}
    names |= dict(roles) | ({"expected backup": list(expected)} if expected else {})
    heads = head_backups(summary_ds, repair, n_heads, n_backups, names)
    note = " ".join([note, *no_backup_notes(heads)]).strip()  # a last-layer head, listed
    parts = {"heads with the largest direct effect, each ablated alone": heads}
    table = heads.assign(source="head")
    if sets_ds is not None:
        joint = set_backups(sets_ds, repair, expected, n_backups, names, bootstrap)
        parts[SET_SECTION] = joint
        note = " ".join([note, *set_tie_notes(joint)]).strip()
        table = pd.concat([table, joint.assign(source="set")], ignore_index=True)
        aucs = ["roc_auc_joint_de_rise", "roc_auc_summed_single_dde", "roc_auc_cap"]
        log.info("ROC-AUC: %s", joint.groupby("set")[aucs].first())
    write_text(csv, table.to_csv(index=False, float_format="%.6g"))
    sections = [
        f"<h2>{html.escape(title)}</h2>" + df.round(4).to_html(index=False, border=0, escape=True)
        for title, df in parts.items()
    ]
    write_text(html_path, tables.html_page(title, note, sections))
    return table
