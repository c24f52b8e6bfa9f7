"""The summary rules, from the ablation stores to what the figures and the report read:
summarize_heads (the per-head summary and its bootstrap intervals; on a task, rule
task_summary, its who-repairs-whom summary too), head_table (task_head_table on a task) and
pick_substitute, and what the figure scripts and mechanism stages use to read a substitute's
picked heads (resolve_params, heads_with_picks) and a task figure's title (task_title).

Runs in the analysis environment: no torch here."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import pandas as pd
import xarray as xr

from selfrepair.analysis import attribution, substitutes, tables
from selfrepair.analysis import intervals as bootstrap
from selfrepair.analysis.from_shards import read_summary_parts, summary_and_intervals_from_parts
from selfrepair.analysis.shards import shard_attrs
from selfrepair.config import Head, target_with_pick
from selfrepair.plots.captions import task_headline
from selfrepair.stages.joblog import SAME_WEIGHTS_KEYS, provenance, revision_of
from selfrepair.stages.records import read_json, read_record, record_for, write_json
from selfrepair.stages.store import (
    DamagedStore,
    check_same_run,
    open_shard_list,
    open_zarr,
    rebuild_hint,
    write_text,
    write_zarr,
)

__all__ = [
    "head_table",
    "heads_with_picks",
    "pick_substitute",
    "resolve_params",
    "summarize_heads",
    "task_title",
]


def summarize_heads(
    *,
    shards: list[str],
    top_tokens: str | None,
    top_fraction: float,
    de_epsilon: float,
    n_resamples: int,
    level: float,
    seed: int,
    out: str,
    intervals_out: str,
    attrs: dict[str, Any],
    sums: str | None = None,
    repairs_out: str | None = None,
) -> tuple[xr.Dataset, xr.Dataset]:
    """The per-head summary over all shards of one (model, ablation) (analysis.reduce) and its
    bootstrap intervals (analysis.intervals), from one pass over the shards; on a task (rule
    task_summary) the same over its answers, and its who-repairs-whom summary.

    Args:
        shards: the ablate rule's stores of this (model, ablation), of either layout
            (engine.store_tokens), one at a time (analysis.shards.read_summary_parts); on a
            task its one task_ablate store (a `token` axis of its answers).
        top_tokens: the head_top_tokens store (each head's top tokens); None on a task, whose
            every answer is a top token (top_fraction 1).
        top_fraction: share of each head's tokens, by clean direct effect, called top tokens.
        de_epsilon: tokens with a clean DE at most this are left out of the LayerNorm share.
        n_resamples: bootstrap resamples.
        level: coverage of the intervals.
        seed: seed of the resamples.
        out: the summary store to write (results/<model>/summary/<ablation>.zarr).
        intervals_out: the intervals store to write (results/<model>/intervals/<ablation>.zarr).
        attrs: the rule's provenance attributes (run_attrs and the ablation).
        sums, repairs_out: a task's attribution sums and the repair summary to write from them
            (running text's is rule repair_summary's).
    """
    draws = dict(de_epsilon=de_epsilon, n_resamples=n_resamples, level=level, seed=seed)
    if top_tokens is None:
        if sums is None or repairs_out is None:
            raise ValueError("a task's summary (no top_tokens) needs its sums and repairs_out")
        return _answers_summary(
            shards[0], sums, top_fraction, out, intervals_out, repairs_out, attrs, **draws
        )
    stores = open_shard_list(shards)
    top = open_zarr(top_tokens)
    # the shards' weights must be those the top tokens were chosen with
    check_same_run([shards[0], top_tokens], [stores[0], top], SAME_WEIGHTS_KEYS)
    token = top.token.values
    n_tokens = sum(ds.sizes["batch"] for ds in stores) * stores[0].sizes["pos"]
    parts = [
        read_summary_parts(ds, token, n_tokens=n_tokens, n_resamples=n_resamples, seed=seed)
        for ds in stores
    ]
    summary, intervals = summary_and_intervals_from_parts(
        parts,
        n_tokens=n_tokens,
        top_fraction=top_fraction,
        **draws,
        attrs=shard_attrs(stores[0]),
        coords={d: stores[0][d].values for d in ("layer", "head") if d in stores[0].coords},
    )
    for ds, path in ((summary, out), (intervals, intervals_out)):
        ds.attrs.update(provenance(**attrs, model_revision=revision_of(stores[0])))
        write_zarr(ds, path)
    return summary, intervals


def _answers_summary(
    store: str,
    sums: str,
    top_fraction: float,
    out: str,
    intervals_out: str,
    repairs_out: str,
    attrs: dict[str, Any],
    **draws: Any,
) -> tuple[xr.Dataset, xr.Dataset]:
    """summarize_heads on a task: its one store's means over the answers, their intervals,
    and the who-repairs-whom summary of its sums (checked: _task_repairs)."""
    data = open_zarr(store)
    check_same_run([store, sums], [data, open_zarr(sums)])
    task = {k: data.attrs[k] for k in ("metric", "ablation") if k in data.attrs}
    rule = {k: v for k, v in attrs.items() if k not in task}  # the store's own, last
    own = provenance(**rule, model_revision=revision_of(data), **task)
    summary, result = bootstrap.summary_and_intervals(data, top_fraction=top_fraction, **draws)
    repairs = _task_repairs(sums, data.sizes["token"])
    for ds, path in ((summary, out), (result, intervals_out), (repairs, repairs_out)):
        ds.attrs.update(own)
        write_zarr(ds, path)
    return summary, result


def _task_repairs(sums_path: str, n_answers: int, tolerance: float = 1e-4) -> xr.Dataset:
    """The repair summary of one task ablation, refused as rule repair_summary refuses running
    text's (analysis.attribution.count_problem: every answer a top token, summed once)."""
    sums = attribution.combine_sums([open_zarr(sums_path).load()])
    source = f"the task's {n_answers} answers, each a top token"
    if problem := attribution.count_problem(sums, n_answers, n_answers, source):
        raise DamagedStore(f"{sums_path} is damaged: {problem}; {rebuild_hint(sums_path)}")
    summary, errors = attribution.checked_repair_summary(sums, tolerance)
    summary.attrs = {**sums.attrs, **{f"max_error_{k}": v for k, v in errors.items()}}
    return summary


def head_table(
    *,
    keys: Sequence[Sequence[str]],
    summaries: Sequence[str],
    intervals: Sequence[str],
    csv: str,
    html_path: str,
    note: str = "",
    task: str | None = None,
) -> pd.DataFrame:
    """The per-head table of every model and ablation, as CSV and HTML (analysis.tables); on a
    task (rule task_head_table) with the task and the metric its logit columns are on, as the
    stores record it (analysis.tables.task_head_table).

    Args:
        keys: (model, ablation) of summaries[i] and intervals[i].
        summaries: the summarize_heads stores.
        intervals: the head_intervals stores.
        csv: the CSV file to write (every column).
        html_path: the HTML page to write (the columns a reader compares).
        note: a paragraph above the HTML tables.
        task: the task whose stores these are (one model), or None (running text).
    """
    keys = [tuple(k) for k in keys]
    if not len(keys) == len(summaries) == len(intervals):
        raise ValueError("give one summary and one interval store per (model, ablation)")
    opened = [open_zarr(p) for p in summaries]
    ints = {k: open_zarr(p) for k, p in zip(keys, intervals, strict=True)}
    if task is None:
        table = tables.head_table(dict(zip(keys, opened, strict=True)), ints)
        write_text(csv, table.to_csv(index=False, float_format="%.6g"))
        write_text(html_path, tables.table_html(table, note))
        return table
    check_same_run(list(summaries), opened, SAME_WEIGHTS_KEYS)
    metrics = {ds.attrs.get("metric") for ds in opened}
    if len(metrics) != 1:
        raise DamagedStore(
            f"the task's summaries {list(summaries)} are on different metrics "
            f"{sorted(map(str, metrics))}; {rebuild_hint(summaries[0])}"
        )
    table = tables.task_head_table(task, metrics.pop(), dict(zip(keys, opened, strict=True)), ints)
    write_text(csv, table.to_csv(index=False, float_format="%.6g"))
    title = f"Per-head self-repair: {keys[0][0]} on {task}"
    write_text(html_path, tables.table_html(table, note, title))
    return table


def pick_substitute(
    *, store: str, model: str, key: str, target: str, pick: Mapping[str, Any], out: str
) -> dict[str, Any]:
    """Pick one target's heads from its store and write the record as JSON
    (analysis.substitutes.pick_record), atomically with its digest and place (records).

    Args:
        store: the per-head summary (largest_top_de) or reinforcement store.
        model: the substitute model.
        key: the pick key (e.g. fig08-1), for messages.
        target: the target's config key (FigureTarget.key), which figure rules match.
        pick: config.pick_spec's dict.
        out: the JSON file to write (results/<model>/substitutes/<key>.json).
    """
    record = substitutes.pick_record(model, key, pick, open_zarr(store), target)
    write_json(out, record)
    return record


def resolve_params(target: dict[str, Any], paths: Sequence[str]) -> dict[str, Any]:
    """A figure script's target params (FigureTarget.as_params()), with its picked heads and
    caption sentence when the substitute is picked at run time (paths: the rule's pick files)."""
    if not target.get("pick"):
        return target
    return target_with_pick(target, record_for(target["key"], paths))


def heads_with_picks(heads: Sequence[Sequence[int]], paths: Sequence[str]) -> list[Head]:
    """A mechanism stage's configured heads plus those its targets' picks chose, sorted,
    without repeats."""
    chosen = {(int(h[0]), int(h[1])) for h in heads}
    for path in paths:
        chosen.update((int(h[0]), int(h[1])) for h in read_record(path)["heads"])
    return sorted(chosen)


def task_title(task: Mapping[str, str] | None, model: str) -> str | None:
    """A task figure's title (plots.captions.task_headline) from the rule's `task` param: the
    task, its ablation and its clean metric JSON (task_metric's, checked); None on running text."""
    if task is None:
        return None
    return task_headline(read_json(task["metric"]), model, task["task"], task["ablation"])
