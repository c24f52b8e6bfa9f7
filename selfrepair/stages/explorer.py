"""The explorer rules: head_explorer (one self-contained HTML page per model: pick an ablation
and a head, read its summary and its top tokens in context; on a task, rule task_explorer, its
answers) and explorer_index (the page linking them). The selection is analysis.explorer's, the page plots.explorer's; this module
opens the stores (checksummed) and decodes the ids with the model's own tokenizer."""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from selfrepair.ablations import ROWS, TASK, ablation_kind, parse_variant
from selfrepair.analysis import explorer as select
from selfrepair.analysis.attribution import head_repairers
from selfrepair.analysis.from_shards import read_candidates
from selfrepair.analysis.shards import merge_candidates
from selfrepair.plots import explorer as page
from selfrepair.stages.data import open_tokens
from selfrepair.stages.store import open_shard_list, open_zarr, write_text

__all__ = ["explorer_data", "explorer_index", "head_explorer", "vocabulary"]

log = logging.getLogger("selfrepair")


def _heads_data(
    shards: Sequence[str], tokens: np.ndarray, *, ablation: str, k: int, context: int
) -> dict[str, dict]:
    """'L.H' -> the head's top tokens by each ranking (analysis.explorer.candidate_entry), from
    every shard's candidates merged (analysis.shards: the same from either layout)."""
    stores = open_shard_list(list(shards))
    merged = merge_candidates([read_candidates(ds, k, context) for ds in stores], k)
    partner, kind = None, ablation_kind(parse_variant(ablation)[0])
    if kind.partner_pool == ROWS and "resample_source" in stores[0].coords:
        partner = np.concatenate([ds["resample_source"].values for ds in stores])
    out = {}
    for layer in range(merged.sizes["layer"]):
        for head in range(merged.sizes["head"]):
            one = merged.isel(layer=layer, head=head)
            if not (one.cand_row.values >= 0).any():
                continue  # not measured
            out[f"{layer}.{head}"] = {
                key: _entries(one.sel(ranking=key), tokens, context, partner, kind.name)
                for key in select.RANKINGS
            }
    return out


def _entries(
    one, tokens: np.ndarray, context: int, partner: np.ndarray | None, kind: str
) -> list[dict]:
    """The candidate_entry of each of one head's merged candidates under one ranking."""
    entries = []
    for c in np.flatnonzero(one.cand_row.values >= 0):
        row = int(one.cand_row.values[c])
        entries.append(
            select.candidate_entry(
                row,
                int(one.cand_pos.values[c]),
                values={key: one[f"cand_{key}"].values[c] for key in select.TOKEN_VALUES},
                windows={key: one[f"cand_window_{key}"].values[c] for key in select.WINDOW_VALUES},
                tokens=tokens,
                context=context,
                partner_row=None if partner is None else int(partner[row]),
                partner_kind=kind,
            )
        )
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
    model: str,
    tokens: str,
    shards: Mapping[str, Sequence[str]],
    summaries: Sequence[str],
    intervals: Sequence[str],
    tokens_per_head: int,
    context: int,
    repairers: Mapping[str, dict] | None = None,
) -> dict[str, Any]:
    """Everything one model's page shows, ids not decoded yet (keys of head_explorer; summaries
    and intervals in the order of shards' ablations; repairers: head_repairers per ablation)."""
    rows, _ = open_tokens(tokens)
    data: dict[str, Any] = {"model": model, "ablations": list(shards), "grid": {}, "numbers": {}}
    data["repairers"] = dict(repairers or {})
    heads: dict[str, dict] = {}
    for i, (ablation, paths) in enumerate(shards.items()):
        data["grid"][ablation], data["numbers"][ablation] = _summary_grid(
            summaries[i], intervals[i]
        )
        heads[ablation] = _heads_data(
            paths, rows, ablation=ablation, k=tokens_per_head, context=context
        )
    first = data["grid"][data["ablations"][0]]["mean_self_repair"]
    data.update(
        n_layers=len(first),
        n_heads=len(first[0]),
        heads=heads,
        tokens_per_head=tokens_per_head,
        context=context,
    )
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
    (rule task_explorer): the same page on the task's answers, with the clean model's metric
    on the task, each answer's counterfactual (metric logit_diff), the metric's drop (clean -
    ablated, as the task figures) and one set of summary rows (every scored token is an
    answer: analysis.explorer.task_numbers).

    Args:
        model: the model's name.
        model_entry: its config entry (whose tokenizer decodes the ids).
        tokens: its tokens.zarr; on a task, the task's prompts store.
        shards: the ablate rule's stores of every ablation (results/<m>/ablation/<a>/shard-*);
            on a task, its task_ablate store of each ablation, in their order.
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
        metric: a task's task_clean metric JSON (the clean model on the task, checked).
    """
    from selfrepair.data.tokens import load_tokenizer

    kwargs = dict(summaries=summaries, intervals=intervals, tokens_per_head=tokens_per_head)
    kwargs.update(
        context=context,
        repairers={  # loaded first: a lazy store costs a dask graph per head's lookup
            a: head_repairers(open_zarr(p).load(), repairers)
            for a, p in (zip(ablations, repairs, strict=True) if repairs else ())
        },
    )
    if task is None:
        data = _text_data(model, tokens, shards, ablations=ablations, **kwargs)
    else:
        label = f"{model} on task {task}"
        data = _task_data(label, tokens, shards, metric, ablations=ablations, **kwargs)
    tokenizer, source = load_tokenizer(dict(model_entry), tokenizer_dir)
    data["vocab"] = vocabulary(tokenizer, _used_ids(data["heads"]))
    data["tokenizer"] = source
    html = page.explorer_html(data, page.FIELD_LABELS if task is None else page.TASK_FIELD_LABELS)
    write_text(out, html)
    log.info("%s: %d bytes, tokenizer %s", out, len(html.encode()), source)
    return data


def _text_data(
    model: str, tokens: str, shards: Sequence[str], *, ablations: Sequence[str], **kwargs: Any
) -> dict[str, Any]:
    """explorer_data of running text, its shards grouped by ablation (their folder)."""
    by_ablation = {a: [s for s in shards if Path(s).parent.name == a] for a in ablations}
    if not all(by_ablation.values()):
        raise ValueError(f"every ablation of {list(ablations)} needs its shards among {shards}")
    return explorer_data(model=model, tokens=tokens, shards=by_ablation, **kwargs)


def explorer_index(
    *,
    pages: Sequence[str],
    models: Sequence[str],
    out: str,
    task_pages: Sequence[str] = (),
    task_labels: Sequence[str] = (),
) -> None:
    """Write the index page linking each model's explorer page (relative links).

    Args:
        pages: the head_explorer pages, one per model.
        models: the models' names, in the order of pages.
        out: the HTML file to write (beside the pages).
        task_pages: the task_explorer pages (below the index's folder).
        task_labels: what each task page shows (model on task), in their order.
    """
    links = [(m, Path(p).name, Path(p).stat().st_size) for m, p in zip(models, pages, strict=True)]
    here = Path(out).parent
    links += [
        (label, Path(p).relative_to(here).as_posix(), Path(p).stat().st_size)
        for label, p in zip(task_labels, task_pages, strict=True)
    ]
    write_text(out, page.index_html(links))


def _task_partners(ablation: str, prompts: Any, data: Any) -> tuple[np.ndarray, np.ndarray | None]:
    """(the rows a task page shows, each prompt's partner row among them or None), by where the
    kind takes z from (selfrepair.ablations): TASK, the corrupted prompts after the prompts;
    ROWS, the partner prompt the task_ablate store records (`resample_source`); else none."""
    n = prompts.tokens.shape[0]
    pool = ablation_kind(parse_variant(ablation)[0]).partner_pool
    if pool == TASK:
        return np.concatenate([prompts.tokens, prompts.corrupted]), n + np.arange(n)
    if pool == ROWS:
        partner = np.full(n, -1, np.int64)
        partner[data.prompt.values] = data.resample_source.values
        return prompts.tokens, partner
    return prompts.tokens, None


def _task_heads(
    store: str, prompts: Any, ablation: str, *, k: int, context: int, counterfactual: bool
) -> dict[str, dict]:
    """'L.H' -> a head's top answers of a task (analysis.explorer.head_tokens on the prompts,
    every other position NaN), with the metric's drop (clean - ablated, the figures' sign), the
    counterfactual answer (metric logit_diff) and the partner the head's z came from
    (_task_partners)."""
    data = open_zarr(store).load()
    n = prompts.tokens.shape[0]
    tokens, partner = _task_partners(ablation, prompts, data)
    where = (data.prompt.values, data.position.values)
    out = {}
    for layer in range(data.sizes["layer"]):
        for head in range(data.sizes["head"]):
            values = {}
            for key, name in select.TOKEN_VALUES.items():
                grid = np.full(prompts.scored.shape, np.nan, np.float32)
                grid[where] = data[name].values[layer, head]
                values[key] = grid
            if np.isnan(values["de"]).all():
                continue  # not measured
            values["drop"] = -values.pop("dlogit")
            rankings = select.head_tokens(
                values,
                tokens=tokens,
                rows=np.arange(n),
                k=k,
                context=context,
                partner_rows=partner,
                partner_kind=ablation,
            )
            for entry in (e for entries in rankings.values() for e in entries):
                if counterfactual:
                    entry["counter"] = int(prompts.counter[entry["row"], entry["pos"]])
            out[f"{layer}.{head}"] = rankings
    return out


def _task_data(
    label: str,
    prompts: str,
    stores: Sequence[str],
    metric: str | None,
    *,
    summaries: Sequence[str],
    intervals: Sequence[str],
    ablations: Sequence[str],
    tokens_per_head: int,
    context: int,
    repairers: Mapping[str, dict],
) -> dict[str, Any]:
    """What a (model, task) page shows, ids not decoded yet (head_explorer on a task; stores,
    summaries and intervals one per ablation; repairers: head_repairers per ablation)."""
    from selfrepair.plots.captions import metric_sentence
    from selfrepair.stages.records import read_json
    from selfrepair.stages.tasks import read_prompts
    from selfrepair.variables import METRIC_LABELS

    rows = read_prompts(prompts)
    data: dict[str, Any] = {"model": label, "ablations": list(ablations)}
    data["grid"], data["numbers"], data["heads"] = {}, {}, {}
    clean = read_json(metric) if metric else None
    counterfactual = bool(clean and clean["metric"] == "logit_diff")
    if clean:
        data["task"] = {
            "metric": METRIC_LABELS[clean["metric"]],
            "clean": metric_sentence(clean),
            "counterfactual": counterfactual,
        }
    for i, ablation in enumerate(ablations):
        grid, numbers = _summary_grid(summaries[i], intervals[i])
        data["grid"][ablation] = grid
        data["numbers"][ablation] = {h: select.task_numbers(n) for h, n in numbers.items()}
        data["heads"][ablation] = _task_heads(
            stores[i],
            rows,
            ablation,
            k=tokens_per_head,
            context=context,
            counterfactual=counterfactual,
        )
    data["repairers"] = dict(repairers)
    first = data["grid"][ablations[0]]["mean_self_repair"]
    data.update(
        n_layers=len(first), n_heads=len(first[0]), tokens_per_head=tokens_per_head, context=context
    )
    return data
