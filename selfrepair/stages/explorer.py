"""The explorer rules: head_explorer (one self-contained HTML page per model: pick an ablation
and a head, read its summary and its top tokens in context; on a task, rule task_explorer, its
answers) and explorer_index (the page linking them). One path for both datasets: what differs
between running text and a task is data (Rows). The selection is analysis.explorer's, the page
plots.explorer's; this module opens the stores (checksummed) and decodes the ids with the
model's own tokenizer."""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import xarray as xr

from selfrepair.ablations import ablation_kind, parse_variant
from selfrepair.analysis import explorer as select
from selfrepair.analysis.attribution import head_repairers
from selfrepair.analysis.from_shards import read_candidates
from selfrepair.analysis.shards import merge_candidates
from selfrepair.plots import explorer as page
from selfrepair.stages.data import open_tokens
from selfrepair.stages.store import open_shard_list, open_zarr, write_text

__all__ = ["Rows", "explorer_data", "explorer_index", "head_explorer", "vocabulary"]

log = logging.getLogger("selfrepair")


@dataclass(frozen=True)
class Rows:
    """A page's dataset, as data: its rows and how its tokens are scored. Running text scores
    every position (its top tokens shown); a task its answers only (each shown with its
    counterfactual under metric logit_diff, the Δlogit as the metric's drop, one set of summary
    rows: analysis.explorer.TASK_FIELDS).

    Attributes:
        label: the page's title (the model, or 'model on task t').
        tokens: the rows [row, tok] (tokens.zarr, or the task's prompts).
        corrupted: a task's corrupted prompts (the partners of kind TASK), else None.
        counter: [row, pos] each answer's counterfactual token (metric logit_diff), else None.
        change: how a token's Δlogit is shown (analysis.explorer.CHANGES).
        fields: the summary's numbers (analysis.explorer.shown_numbers).
        labels: the summary rows' labels (plots.explorer).
        task: the page's note on the clean model's metric (a task's), else None.
    """

    label: str
    tokens: np.ndarray
    corrupted: np.ndarray | None = None
    counter: np.ndarray | None = None
    change: str = "dlogit"
    fields: tuple[str, ...] = select.SUMMARY_FIELDS
    labels: Mapping[str, str] = field(default_factory=lambda: page.FIELD_LABELS)
    task: dict | None = None


def _heads_data(
    stores: Sequence[xr.Dataset], rows: Rows, *, ablation: str, k: int, context: int
) -> dict[str, dict]:
    """'L.H' -> the head's top tokens by each ranking (analysis.explorer.candidate_entry), from
    every store's candidates merged (analysis.shards: the same from either layout; a task's
    answers put back on rows first, analysis.explorer.answer_rows)."""
    stores = [select.answer_rows(ds) if "token" in ds.dims else ds for ds in stores]
    merged = merge_candidates([read_candidates(ds, k, context) for ds in stores], k)
    kind = ablation_kind(parse_variant(ablation)[0])
    recorded = all("resample_source" in ds.coords for ds in stores)
    sources = [(ds.batch.values, ds.resample_source.values) for ds in stores] if recorded else []
    tokens, partner = select.partner_rows(
        ablation, rows.tokens, corrupted=rows.corrupted, sources=sources
    )
    out = {}
    for layer in range(merged.sizes["layer"]):
        for head in range(merged.sizes["head"]):
            one = merged.isel(layer=layer, head=head)
            if not (one.cand_row.values >= 0).any():
                continue  # not measured
            out[f"{layer}.{head}"] = {
                key: _entries(one.sel(ranking=key), tokens, context, partner, kind.name, rows)
                for key in select.RANKINGS
            }
    return out


def _entries(
    one, tokens: np.ndarray, context: int, partner: np.ndarray | None, kind: str, rows: Rows
) -> list[dict]:
    """The candidate_entry of each of one head's merged candidates under one ranking, with
    its counterfactual answer where the dataset has one."""
    entries = []
    for c in np.flatnonzero(one.cand_row.values >= 0):
        row, pos = int(one.cand_row.values[c]), int(one.cand_pos.values[c])
        values = {key: one[f"cand_{key}"].values[c] for key in select.TOKEN_VALUES}
        entry = select.candidate_entry(
            row,
            pos,
            values=select.with_change(values, rows.change),
            windows={key: one[f"cand_window_{key}"].values[c] for key in select.WINDOW_VALUES},
            tokens=tokens,
            context=context,
            partner_row=None if partner is None else int(partner[row]),
            partner_kind=kind,
        )
        if rows.counter is not None:
            entry["counter"] = int(rows.counter[row, pos])
        entries.append(entry)
    return entries


def _summary_grid(summary_path: str, intervals_path: str) -> tuple[dict, dict]:
    """(field -> [layer, head] list, 'L.H' -> head_numbers) of one ablation."""
    summary = open_zarr(summary_path)
    intervals = open_zarr(intervals_path)
    fields = {f: summary[f].values for f in select.SUMMARY_FIELDS}
    bounds = {f: intervals[f].values for f in intervals.data_vars if f in fields}
    n_layers, n_heads = fields["mean_self_repair"].shape
    numbers = {
        f"{layer}.{head}": select.head_numbers(fields, bounds, layer, head)
        for layer in range(n_layers)
        for head in range(n_heads)
    }
    grid = {
        f: [[select.rounded(x) for x in row] for row in fields[f]]
        for f in ("mean_self_repair", "top_self_repair")
    }
    return grid, numbers


def vocabulary(tokenizer: Any, ids: set[int]) -> dict[str, str]:
    """id -> the readable piece (analysis.explorer.readable) of each id, decoded alone."""
    return {str(i): select.readable(tokenizer.decode([i])) for i in sorted(ids)}


def _used_ids(heads: Mapping[str, Mapping[str, dict]]) -> set[int]:
    ids: set[int] = set()
    for by_ablation in heads.values():
        for rankings in by_ablation.values():
            for entries in rankings.values():
                for e in entries:
                    ids.update(e["ids"])
                    ids.add(e["next"])
                    if "counter" in e:
                        ids.add(e["counter"])
                    if "partner" in e:
                        ids.update(e["partner"]["ids"])
                        ids.add(e["partner"]["next"])
    return ids


def explorer_data(
    *,
    rows: Rows,
    stores: Mapping[str, Sequence[str]],
    summaries: Sequence[str],
    intervals: Sequence[str],
    tokens_per_head: int,
    context: int,
    repairers: Mapping[str, dict] | None = None,
) -> dict[str, Any]:
    """Everything one page shows, ids not decoded yet (keys of head_explorer).

    Args:
        rows: the dataset (Rows).
        stores: ablation -> its ablate stores (running text's shards, or a task's one store).
        summaries, intervals: the summarize_heads stores, in the order of stores' ablations.
        tokens_per_head, context: as head_explorer.
        repairers: ablation -> head_repairers.
    """
    data: dict[str, Any] = {"model": rows.label, "ablations": list(stores), "grid": {}}
    data.update(numbers={}, repairers=dict(repairers or {}))
    heads: dict[str, dict] = {}
    for i, (ablation, paths) in enumerate(stores.items()):
        grid, numbers = _summary_grid(summaries[i], intervals[i])
        data["grid"][ablation] = grid
        data["numbers"][ablation] = {
            h: select.shown_numbers(n, rows.fields) for h, n in numbers.items()
        }
        heads[ablation] = _heads_data(
            open_shard_list(list(paths)),
            rows,
            ablation=ablation,
            k=tokens_per_head,
            context=context,
        )
    first = data["grid"][data["ablations"][0]]["mean_self_repair"]
    data.update(n_layers=len(first), n_heads=len(first[0]), heads=heads)
    data.update(tokens_per_head=tokens_per_head, context=context)
    if rows.task is not None:
        data["task"] = rows.task
    return data


def head_explorer(
    *,
    model: str,
    model_entry: Mapping[str, Any],
    tokens: str,
    shards: Sequence[str],
    summaries: Sequence[str],
    intervals: Sequence[str],
    ablations: Sequence[str],
    tokens_per_head: int,
    context: int,
    out: str,
    tokenizer_dir: str | None = None,
    repairs: Sequence[str] = (),
    repairers: int = 5,
    task: str | None = None,
    metric: str | None = None,
) -> dict[str, Any]:
    """Write one model's explorer page (a self-contained HTML file), or one (model, task)'s
    (rule task_explorer): the same page on the task's answers (Rows), with the clean model's
    metric on the task, each answer's counterfactual (metric logit_diff), the metric's drop
    (clean - ablated, as the task figures) and one set of summary rows.

    Args:
        model: the model's name.
        model_entry: its config entry (whose tokenizer decodes the ids).
        tokens: its tokens.zarr; on a task, the task's prompts store.
        shards: the ablate stores of every ablation (running text's
            results/<m>/ablation/<a>/shard-*, a task's .../ablation/<a>.zarr).
        summaries, intervals: the summarize_heads stores, one per ablation.
        ablations: the ablations shown, in the order of summaries and intervals.
        tokens_per_head: top tokens shown per head and ranking.
        context: tokens shown before (and with) each top token.
        out: the HTML file to write.
        tokenizer_dir: a tokenizer or checkpoint folder (a trained model's), else the model's own.
        repairs: the repair summaries, one per ablation (who repairs whom; none when
            engine.attribution is off): each head's top repairers are listed.
        repairers: how many (explorer.repairers).
        task: the task whose stores these are, or None (running text).
        metric: a task's task_metric JSON (the clean model on the task, checked).
    """
    from selfrepair.data.tokens import load_tokenizer

    rows = _rows(model, tokens, task, metric)
    data = explorer_data(
        rows=rows,
        stores=_by_ablation(shards, ablations),
        summaries=summaries,
        intervals=intervals,
        tokens_per_head=tokens_per_head,
        context=context,
        repairers={  # loaded first: a lazy store costs a dask graph per head's lookup
            a: head_repairers(open_zarr(p).load(), repairers)
            for a, p in (zip(ablations, repairs, strict=True) if repairs else ())
        },
    )
    tokenizer, source = load_tokenizer(dict(model_entry), tokenizer_dir)
    data["vocab"] = vocabulary(tokenizer, _used_ids(data["heads"]))
    data["tokenizer"] = source
    html = page.explorer_html(data, rows.labels)
    write_text(out, html)
    log.info("%s: %d bytes, tokenizer %s", out, len(html.encode()), source)
    return data


def _ablation_of(path: str) -> str:
    """The ablation an ablate store's path names: ablation/<a>/shard-* (running text) or
    ablation/<a>.zarr (a task)."""
    path = Path(path)
    return path.stem if path.parent.name == "ablation" else path.parent.name


def _by_ablation(shards: Sequence[str], ablations: Sequence[str]) -> dict[str, list[str]]:
    """ablation -> its stores among shards, in the order of ablations."""
    by_ablation = {a: [s for s in shards if _ablation_of(s) == a] for a in ablations}
    if not all(by_ablation.values()):
        raise ValueError(f"every ablation of {list(ablations)} needs its stores among {shards}")
    return by_ablation


def _rows(model: str, tokens: str, task: str | None, metric: str | None) -> Rows:
    """The page's Rows: running text's tokens.zarr (task None), or a task's prompts store
    with its corrupted prompts, the clean metric (task_metric's JSON) noted and each answer's
    counterfactual under logit_diff."""
    if task is None:
        return Rows(label=model, tokens=open_tokens(tokens)[0])
    from selfrepair.plots.captions import metric_sentence
    from selfrepair.stages.records import read_json
    from selfrepair.stages.tasks import read_prompts
    from selfrepair.variables import METRIC_LABELS

    held = read_prompts(tokens)
    clean = read_json(metric) if metric else None
    counterfactual = bool(clean and clean["metric"] == "logit_diff")
    note = clean and {
        "metric": METRIC_LABELS[clean["metric"]],
        "clean": metric_sentence(clean),
        "counterfactual": counterfactual,
    }
    return Rows(
        label=f"{model} on task {task}",
        tokens=held.tokens,
        corrupted=held.corrupted,
        counter=held.counter if counterfactual else None,
        change="drop",
        fields=select.TASK_FIELDS,
        labels=page.TASK_FIELD_LABELS,
        task=note or None,
    )


def explorer_index(*, pages: Sequence[str], labels: Sequence[str], out: str) -> None:
    """Write the index page linking every explorer page (relative links), running text's and
    the tasks' alike.

    Args:
        pages: the head_explorer and task_explorer pages (in or below the index's folder).
        labels: what each page shows (the model, or 'model on task t'), in their order.
        out: the HTML file to write.
    """
    here = Path(out).parent
    links = [
        (label, Path(p).relative_to(here).as_posix(), Path(p).stat().st_size)
        for label, p in zip(labels, pages, strict=True)
    ]
    write_text(out, page.index_html(links))
