"""The summary rules, from the ablation shards to what the figures and the report read:
summarize_heads (the per-head summary and its bootstrap intervals), head_table and
pick_substitute, and what the figure scripts and mechanism stages use to read a substitute's
picked heads (resolve_params, heads_with_picks).

Runs in the analysis environment: no torch here."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import pandas as pd
import xarray as xr

from selfrepair.analysis import substitutes, tables
from selfrepair.analysis.from_shards import read_summary_parts, summary_and_intervals_from_parts
from selfrepair.analysis.shards import shard_attrs
from selfrepair.config import Head, target_with_pick
from selfrepair.stages.joblog import SAME_WEIGHTS_KEYS, provenance, revision_of
from selfrepair.stages.records import read_record, record_for, write_json
from selfrepair.stages.store import (
    check_same_run,
    open_shard_list,
    open_zarr,
    write_text,
    write_zarr,
)

__all__ = [
    "head_table",
    "heads_with_picks",
    "pick_substitute",
    "resolve_params",
    "summarize_heads",
]


def summarize_heads(
    *,
    shards: list[str],
    top_tokens: str,
    top_fraction: float,
    de_epsilon: float,
    n_resamples: int,
    level: float,
    seed: int,
    out: str,
    intervals_out: str,
    attrs: dict[str, Any],
) -> tuple[xr.Dataset, xr.Dataset]:
    """The per-head summary over all shards of one (model, ablation) (analysis.reduce) and its
    bootstrap intervals (analysis.intervals), from one pass over the shards.

    Args:
        shards: the ablate rule's stores of this (model, ablation), of either layout
            (engine.store_tokens), one at a time (analysis.shards.read_summary_parts).
        top_tokens: the head_top_tokens store (each head's top tokens).
        top_fraction: share of each head's tokens, by clean direct effect, called top tokens.
        de_epsilon: tokens with a clean DE at most this are left out of the LayerNorm share.
        n_resamples: bootstrap resamples.
        level: coverage of the intervals.
        seed: seed of the resamples.
        out: the summary store to write (results/<model>/summary/<ablation>.zarr).
        intervals_out: the intervals store to write (results/<model>/intervals/<ablation>.zarr).
        attrs: the rule's provenance attributes (run_attrs and the ablation).
    """
    stores = open_shard_list(shards)
    top = open_zarr(top_tokens)
    # the shards' weights must be those the top tokens were chosen with
    check_same_run([shards[0], top_tokens], [stores[0], top], SAME_WEIGHTS_KEYS)
    token = top.token.values
    n_tokens = sum(ds.sizes["batch"] for ds in stores) * stores[0].sizes["pos"]
    draws = dict(n_tokens=n_tokens, n_resamples=n_resamples, seed=seed)
    parts = [read_summary_parts(ds, token, **draws) for ds in stores]
    summary, intervals = summary_and_intervals_from_parts(
        parts,
        n_tokens=n_tokens,
        top_fraction=top_fraction,
        de_epsilon=de_epsilon,
        n_resamples=n_resamples,
        level=level,
        seed=seed,
        attrs=shard_attrs(stores[0]),
        coords={d: stores[0][d].values for d in ("layer", "head") if d in stores[0].coords},
    )
    for ds, path in ((summary, out), (intervals, intervals_out)):
        ds.attrs.update(provenance(**attrs, model_revision=revision_of(stores[0])))
        write_zarr(ds, path)
    return summary, intervals


def head_table(
    *,
    keys: Sequence[Sequence[str]],
    summaries: Sequence[str],
    intervals: Sequence[str],
    csv: str,
    html_path: str,
    note: str = "",
) -> pd.DataFrame:
    """The per-head table of every model and ablation, as CSV and HTML (analysis.tables).

    Args:
        keys: (model, ablation) of summaries[i] and intervals[i].
        summaries: the summarize_heads stores.
        intervals: the head_intervals stores.
        csv: the CSV file to write (every column).
        html_path: the HTML page to write (the columns a reader compares).
        note: a paragraph above the HTML tables.
    """
    keys = [tuple(k) for k in keys]
    if not len(keys) == len(summaries) == len(intervals):
        raise ValueError("give one summary and one interval store per (model, ablation)")
    table = tables.head_table(
        {k: open_zarr(p) for k, p in zip(keys, summaries, strict=True)},
        {k: open_zarr(p) for k, p in zip(keys, intervals, strict=True)},
    )
    write_text(csv, table.to_csv(index=False, float_format="%.6g"))
    write_text(html_path, tables.table_html(table, note))
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
