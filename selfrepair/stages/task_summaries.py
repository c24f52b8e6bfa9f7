"""The task rules with no running-text counterpart: task_metric (a task's clean metric as JSON,
from its clean store) and task_backups (rules/tasks.smk: the
backup-heads table: the largest heads' top compensators, and each jointly ablated set's ranked
compensators with their ROC-AUC against the expected backups), and the expected backups it and
the method table rank against (expected_heads). A task's summaries are summarize_heads' (rule
task_summary). Runs in the analysis environment: no torch here."""

from __future__ import annotations

import html
import logging
from collections.abc import Mapping, Sequence
from typing import Any

import pandas as pd

from selfrepair.analysis import tables
from selfrepair.analysis.tasks import (
    clean_metric_record,
    head_backups,
    no_backup_notes,
    set_backups,
    set_tie_notes,
)
from selfrepair.stages.joblog import SAME_WEIGHTS_KEYS
from selfrepair.stages.records import read_json, write_json
from selfrepair.stages.store import check_same_run, open_zarr, write_text
from selfrepair.tasks.picks import largest_heads

__all__ = ["expected_heads", "set_heads", "task_backups", "task_metric"]

log = logging.getLogger("selfrepair")

# Not CoAx's score (analysis.tasks): a head's change of direct effect, tied at 0 upstream.
SET_SECTION = (
    "sets ablated jointly: each head's joint-set direct-effect rise (its mean change of direct "
    "effect), ranked against the expected backups; heads at or below the set's first layer tie "
    "at 0, which caps the ROC-AUC at roc_auc_cap"
)


def expected_heads(expected: Sequence | Mapping[str, float], metric: str) -> list[list[int]]:
    """tasks.<task>.expected_backups as heads: those listed, or for {induction_score_above: s}
    the heads whose induction score (task_metric's metric.json, `metric`) is above s."""
    if not isinstance(expected, Mapping):
        return [list(h) for h in expected]
    from selfrepair.tasks.induction import induction_heads

    scores = read_json(metric)["induction_scores"]
    return induction_heads(scores, float(expected["induction_score_above"]))


def set_heads(
    sets: Mapping[str, Any], metric: str | None, clean: str | None = None
) -> dict[str, list[list[int]]]:
    """tasks.<task>.ablation_sets as heads: each set as listed, or picked at run time: for
    {induction_score_top: k} the k heads with the largest induction score in task_metric's
    metric.json (`metric`), for {direct_effect_top: k} the k heads with the largest mean clean
    direct effect on the task's answers in its clean store (`clean`, de_head)."""
    values = {}
    for name, heads in sets.items():
        if isinstance(heads, Mapping):
            (by, k), *_ = heads.items()  # the schema allows one key
            if by == "induction_score_top":
                scores = read_json(metric)["induction_scores"]
            else:
                scores = open_zarr(clean)["de_head"].mean("token").values
            values[name] = largest_heads(scores, int(k), by)
    return {name: values.get(name) or [list(h) for h in heads] for name, heads in sets.items()}


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
        metric: the task's metric.json (task_metric's; the induction scores).
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


def task_metric(clean: str, *, out: str) -> dict:
    """A task's clean metric as JSON (analysis.clean_metric's numbers, an induction task's
    scores; captions and the picked sets read it), from its clean store's provenance, where
    clean_cache recorded it.

    Args:
        clean: the task's clean store (results/<model>/tasks/<task>/clean/shard-000.zarr).
        out: the JSON file to write (results/<model>/tasks/<task>/metric.json).
    """
    numbers = clean_metric_record(open_zarr(clean).attrs)
    write_json(out, numbers)
    return numbers
