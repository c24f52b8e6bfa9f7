"""The task rules that make prompts or run a model (rules/tasks.smk): task_prompts (the prompts
store, from the model's own tokenizer), task_clean (clean direct effects on the metric and the
clean metric a caption prints), task_ablate (every head under one ablation, with every
component's change of direct effect) and task_set_ablate (each named set of heads ablated
jointly; also rule set_ablate's, on a token shard of running text). Per-token stores of a task
keep the answer positions only (analysis.tasks.scored_tokens)."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import xarray as xr

from selfrepair.analysis.tasks import clean_metric, scored_tokens
from selfrepair.config import ConfigError
from selfrepair.stages.joblog import files_digest, model_revision, provenance
from selfrepair.stages.records import write_json
from selfrepair.stages.store import open_zarr, write_zarr
from selfrepair.tasks import TaskPrompts

if TYPE_CHECKING:
    from selfrepair.engine.inputs import TaskInputs
    from selfrepair.stages.job import ModelJob

__all__ = [
    "read_prompts",
    "task_ablate",
    "task_clean",
    "task_inputs",
    "task_prompts",
    "task_set_ablate",
]

log = logging.getLogger("selfrepair")

# The model_revision of a trained model's prompts store: made from the tokenizer alone (its
# files' digest is the store's tokenizer_revision), before the weights exist.
TOKENIZER_ONLY = "none: made from the tokenizer alone (tokenizer_revision)"
ROWS = ("tokens", "corrupted", "scored", "counter", "baseline", "length", "text")


def task_prompts(
    *,
    task: str,
    spec: dict,
    model: dict,
    seed: int,
    out: str,
    attrs: dict,
    tokenizer_dir=None,
    n_ctx: int | None = None,
) -> TaskPrompts:
    """Rule task_prompts: a task's prompts made with the model's own tokenizer, as a store of
    the padded rows (tokens, corrupted, scored, counter, baseline, length, text, info_*).

    Args:
        task: the task's name (tasks.<name>).
        spec: its config entry.
        model: the model's config entry (whose tokenizer).
        seed: the run's seed.
        out: the store to write (results/<model>/tasks/<task>/prompts.zarr).
        attrs: the rule's provenance attributes.
        tokenizer_dir: a trained model's tokenizer folder, a path model's folder, else None (hub).
        n_ctx: the model's context, when the config knows it (config.model_context): a longer
            prompt is refused here, naming its file:line, before any model job.
    """
    from selfrepair.data.tokens import load_tokenizer, special_ids
    from selfrepair.tasks import TaskError, build_task

    tokenizer, source = load_tokenizer(model, tokenizer_dir)
    try:
        prompts = build_task(spec, tokenizer, seed, special_ids(tokenizer)[0], n_ctx)
    except TaskError as err:
        raise ConfigError(f"config key tasks.{task} ({model['name']}'s tokenizer): {err}") from None
    dims = {"tokens": ("prompt", "tok"), "corrupted": ("prompt", "tok"), "length": ("prompt",)}
    dims |= {k: ("prompt", "pos") for k in ("scored", "counter", "baseline")}
    data = {k: (dims[k], getattr(prompts, k)) for k in dims}
    data["text"] = ("prompt", np.array(prompts.text, dtype=object))
    data |= {f"info_{k}": ("prompt", v) for k, v in prompts.info.items()}
    own = {**prompts.attrs, "tokenizer": source, "vocab_size": len(tokenizer)}
    revision = model_revision(model.get("name"), tokenizer_dir)
    if revision == "unknown" and tokenizer_dir is not None:
        # A trained model's prompts are made from its tokenizer alone, before it trains (so that
        # bad prompts stop the run early): they record the tokenizer's files, not the weights.
        revision = TOKENIZER_ONLY
        own["tokenizer_revision"] = files_digest(
            [p for p in Path(tokenizer_dir).iterdir() if p.is_file() and p.name[0] != "."]
        )
    ds = xr.Dataset(data, attrs=provenance(**{**attrs, **own, "model_revision": revision}))
    write_zarr(ds, out)
    log.info("%d prompts of up to %d tokens", *prompts.tokens.shape)
    return prompts


def read_prompts(path: str) -> TaskPrompts:
    """A prompts store (task_prompts') as TaskPrompts."""
    ds = open_zarr(path).load()
    values = {k: ds[k].values for k in ROWS}
    info = {k[len("info_") :]: ds[k].values for k in ds.data_vars if k.startswith("info_")}
    return TaskPrompts(**{**values, "text": list(values["text"])}, attrs=dict(ds.attrs), info=info)


def task_inputs(prompts: TaskPrompts, metric: str) -> TaskInputs:
    """The engine's TaskInputs of a task: its counterfactuals (metric logit_diff only), its
    corrupted prompts and its real positions."""
    import torch

    from selfrepair.engine.inputs import TaskInputs

    counter = torch.from_numpy(prompts.counter.astype(np.int64)) if metric == "logit_diff" else None
    partners = torch.from_numpy(prompts.corrupted.astype(np.int64))
    return TaskInputs(counter, partners, torch.from_numpy(prompts.real))


def _model_for(job: ModelJob, task: str, prompts: TaskPrompts):
    """The job's model, refusing rows longer than its context with the task's key."""
    model = job.model()
    width = prompts.tokens.shape[1]
    if width - 1 > model.cfg.n_ctx:
        longest = int(np.argmax(prompts.length))
        raise ConfigError(
            f"config key tasks.{task}: its rows of up to {width} tokens exceed the context of "
            f"{job.entry['name']} ({model.cfg.n_ctx} positions), e.g. prompt {longest} "
            f"({prompts.text[longest][:60]!r}); shorten the prompts of its file to at most "
            f"{model.cfg.n_ctx - 1} tokens (an induction task: lower length)"
        )
    return model


def _induction_scores(model, prompts: TaskPrompts, batch_size: int) -> list[list[float]]:
    """[layer][head] induction scores (engine.induction) of an induction task's prompts."""
    from selfrepair.engine.induction import induction_scores

    length = int(prompts.info["length"][0])  # every prompt's: one length per task
    rows = prompts.tokens[:, : 2 * length].astype(np.int64)
    return induction_scores(model, rows, length, batch_size).round(6).tolist()


def _rows(prompts: TaskPrompts):
    import torch

    return torch.from_numpy(prompts.tokens.astype(np.int64))


def task_clean(
    job: ModelJob,
    *,
    task: str,
    metric: str,
    out: str,
    metric_out: str,
    attrs: dict[str, Any],
    tolerance: float = 1e-4,
) -> dict[str, Any]:
    """Rule task_clean: every component's clean direct effect on the metric at the answer
    positions (refused if they miss it), and the clean metric as JSON (analysis.clean_metric).

    Args:
        job: the model job (its `tokens` is the prompts store).
        task: the task's name.
        metric: correct_logit or logit_diff.
        out: the store to write (results/<model>/tasks/<task>/clean.zarr).
        metric_out: the JSON file of the clean metric (captions read it).
        attrs: the rule's provenance attributes.
        tolerance: the largest |sum of direct effects - metric| accepted.
    """
    from selfrepair.engine.clean import clean_direct_effects, decomposition_error

    prompts = read_prompts(job.tokens)
    model = _model_for(job, task, prompts)
    with job.guarded(model, {"engine.batch_size": job.batch_size}):
        ds = clean_direct_effects(
            model,
            _rows(prompts),
            batch_size=job.batch_size,
            counter=task_inputs(prompts, metric).counter,
            top1=True,
            progress=True,
            desc="clean",
        )
    err = decomposition_error(scored_tokens(ds, prompts.scored))
    if not err <= tolerance:
        raise ArithmeticError(f"direct effects miss the metric by {err:.3g} > {tolerance}")
    numbers = clean_metric(
        ds.logit_clean.values,
        ds.top1.values,
        ds.loss.values,
        prompts.scored,
        prompts.baseline,
        metric,
    )
    if "length" in prompts.info:  # induction: each head's prefix-matching score, no ablation
        numbers["induction_scores"] = _induction_scores(model, prompts, job.batch_size)
    log.info("clean metric: %s", numbers)
    ds = scored_tokens(ds, prompts.scored)
    ds.attrs.update(job.provenance(attrs, decomposition_max_error=err, **numbers))
    write_zarr(ds, out)
    write_json(metric_out, numbers)
    return numbers


def task_ablate(
    job: ModelJob,
    *,
    task: str,
    metric: str,
    ablation: str,
    heads_per_pass: int,
    mean_include_bos: bool,
    out: str,
    sums_out: str,
    detail_out: str,
    attrs: dict[str, Any],
    freeze_ln: bool = False,
) -> xr.Dataset:
    """Rule task_ablate: every configured head under one ablation on the task's prompts
    (engine.measure_heads), at the answer positions, with every downstream component's change
    of direct effect there: summed (sums_out) and per answer (detail_out).

    Args:
        job: the model job (its `tokens` is the prompts store).
        task: the task's name.
        metric: correct_logit or logit_diff.
        ablation: corrupted, resample, mean or zero.
        heads_per_pass, mean_include_bos: as the ablate rule's.
        out: the store of the head variables (results/<model>/tasks/<task>/ablation/<a>.zarr).
        sums_out, detail_out: the attribution stores (.../attribution/sums-<a>.zarr, detail-).
        attrs: the rule's provenance attributes.
        freeze_ln: every LayerNorm after the ablated head keeps its clean scale (the path's
            ablation is <ablation>-frozen-ln).
    """
    from selfrepair.engine.attribution import RepairSums
    from selfrepair.engine.self_repair import measure_heads

    prompts = read_prompts(job.tokens)
    model = _model_for(job, task, prompts)
    cfg = model.cfg
    top = np.broadcast_to(prompts.scored, (cfg.n_layers, cfg.n_heads, *prompts.scored.shape))
    sums = RepairSums(model, np.ascontiguousarray(top), keep_tokens=True, scored=prompts.scored)
    keys = {"engine.batch_size": job.batch_size, "engine.heads_per_pass": heads_per_pass}
    with job.guarded(model, keys):
        ds = measure_heads(
            model,
            _rows(prompts),
            ablation,
            heads=job.heads,
            batch_size=job.batch_size,
            heads_per_pass=heads_per_pass,
            mean_include_bos=mean_include_bos,
            freeze_ln=freeze_ln,
            progress=True,
            desc=f"{task}: {ablation} ablation" + (" (frozen LayerNorm)" if freeze_ln else ""),
            sums=sums,
            task=task_inputs(prompts, metric),
        )
    own = job.provenance(attrs, ablation=ablation, metric=metric)
    if freeze_ln:  # attributes only where frozen, so that every other store stays the same
        own["freeze_ln"] = 1
    ds = scored_tokens(ds, prompts.scored)
    ds.attrs.update(own)
    sums_ds, detail = sums.dataset(), sums.detail_dataset()
    sums_ds.attrs.update(own)
    detail.attrs.update(own, heads=[list(h) for h in _measured(ds)])
    write_zarr(sums_ds, sums_out)
    write_zarr(detail, detail_out)
    write_zarr(ds, out, chunks={"layer": 1})
    return ds


def _measured(ds: xr.Dataset) -> list[tuple[int, int]]:
    measured = ~np.isnan(ds.de_clean.values).all(-1)
    return [(int(layer), int(head)) for layer, head in zip(*np.nonzero(measured), strict=True)]


def task_set_ablate(
    job: ModelJob,
    *,
    task: str | None,
    metric: str | None,
    ablation: str,
    sets: Mapping[str, Any],
    mean_include_bos: bool,
    out: str,
    attrs: dict[str, Any],
    metric_json: str | None = None,
) -> xr.Dataset:
    """Rules task_set_ablate and set_ablate: each named set of heads ablated jointly
    (engine.sets.measure_sets), the set's variables and every component's change of direct
    effect: on a task's prompts at its answer positions, or on one token shard of running text
    at every token (the paper's metric; the batch coordinate the global row, as ablate's).

    Args:
        job: the model job (its `tokens`: the prompts store, or the corpus with one shard).
        task: the task's name; None: running text.
        metric: the task's correct_logit or logit_diff (None on running text).
        ablation: a kind of selfrepair.ablations.KINDS (running text: one it can take).
        sets: name -> [[layer, head], ...] or {induction_score_top: k} (tasks.<task>.ablation_sets,
            or ablation_sets; stages.task_summaries.set_heads).
        mean_include_bos: as the ablate rule's.
        out: the store to write (results/<model>/tasks/<task>/sets/<ablation>.zarr, or
            results/<model>/sets/<ablation>/shard-<n>.zarr).
        attrs: the rule's provenance attributes.
        metric_json: task_clean's metric.json, when a set is picked from its induction scores.
    """
    from selfrepair.engine.sets import measure_sets
    from selfrepair.stages.task_summaries import set_heads

    heads = {name: [tuple(h) for h in hs] for name, hs in set_heads(sets, metric_json).items()}
    if task is None:
        rows = job.rows()
        model, inputs, scored = job.model(seq_len=rows.shape[1]), None, None
    else:
        prompts = read_prompts(job.tokens)
        model, rows = _model_for(job, task, prompts), _rows(prompts)
        inputs, scored = task_inputs(prompts, metric), prompts.scored
    with job.guarded(model, {"engine.batch_size": job.batch_size}):
        ds = measure_sets(
            model,
            rows,
            ablation,
            heads,
            batch_size=job.batch_size,
            mean_include_bos=mean_include_bos,
            task=inputs,
            scored=scored,
            progress=True,
        )
    if task is None:
        from selfrepair.stages.job import row_coords

        ds = row_coords(ds, job.bounds[0])
        ds.attrs.update(job.provenance(attrs, ablation=ablation))
    else:
        ds.attrs.update(job.provenance(attrs, ablation=ablation, metric=metric))
    write_zarr(ds, out)
    return ds
