"""The task rules that make prompts or ablate sets (rules/tasks.smk): task_prompts (the prompts
store, from the model's own tokenizer) and task_set_ablate (each named set of heads ablated
jointly; also rule set_ablate's, on a token shard of running text); and `measured`, the
distribution a model job measures as data (`Measured`: running text or a task's prompts), which
the clean_cache and ablate stages take (clean_cache on a task's {dataset}, ablate through its
task variant task_ablate). Per-token stores of a task keep the answer positions only
(analysis.tasks.scored_tokens)."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import xarray as xr

from selfrepair.analysis.tasks import scored_tokens
from selfrepair.config import ConfigError
from selfrepair.stages.joblog import files_digest, model_revision, provenance
from selfrepair.stages.store import open_zarr, write_zarr
from selfrepair.tasks import TaskPrompts

if TYPE_CHECKING:
    import torch

    from selfrepair.engine.inputs import TaskInputs
    from selfrepair.stages.job import ModelJob

__all__ = [
    "Measured",
    "measured",
    "read_prompts",
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
    corrupted prompts, its real positions and its prompts' template groups."""
    import torch

    from selfrepair.engine.inputs import TaskInputs

    counter = torch.from_numpy(prompts.counter.astype(np.int64)) if metric == "logit_diff" else None
    partners = torch.from_numpy(prompts.corrupted.astype(np.int64))
    groups = torch.from_numpy(prompts.groups)
    return TaskInputs(counter, partners, torch.from_numpy(prompts.real), groups)


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


@dataclass(frozen=True)
class Measured:
    """The distribution a model job measures: token rows and how they are scored. Running text
    (prompts None): every position scored, the next token its answer, no counterfactual,
    resample's partner the next row. A task: its answer positions and its TaskInputs.

    Args:
        rows: [batch, pos + 1] token rows.
        start: running text: the shard's first row (its stores number rows globally).
        prompts: a task's prompts (None: running text).
        inputs: a task's TaskInputs (None: running text, the paper's code path bitwise).
    """

    rows: torch.Tensor
    start: int = 0
    prompts: TaskPrompts | None = None
    inputs: TaskInputs | None = None

    @property
    def scored(self) -> np.ndarray | None:
        """[batch, pos] the answer positions (None: every position)."""
        return None if self.prompts is None else self.prompts.scored

    def narrow(self, ds: xr.Dataset) -> xr.Dataset:
        """A per-token store as written: a task's on its answers (analysis.tasks.scored_tokens),
        a shard's with global row numbers (its batch and resample_source coordinates)."""
        if self.prompts is not None:
            return scored_tokens(ds, self.prompts.scored)
        from selfrepair.stages.job import row_coords

        ds = row_coords(ds, self.start)
        if "resample_source" in ds.coords:
            ds = ds.assign_coords(resample_source=ds.resample_source + self.start)
        return ds


def measured(job: ModelJob, task: str | None = None, metric: str | None = None):
    """(the job's model, its Measured rows): the task's prompts store when task is given (rows
    longer than the model's context refused with the task's key), else the job's one shard.

    Args:
        job: the model job (its `tokens`: the corpus, or the task's prompts store).
        task: the task's name; None: running text.
        metric: the task's correct_logit or logit_diff (counterfactuals: logit_diff only).
    """
    if task is None:
        rows = job.rows()
        return job.model(seq_len=rows.shape[1]), Measured(rows, start=job.bounds[0])
    prompts = read_prompts(job.tokens)
    model = _model_for(job, task, prompts)
    return model, Measured(_rows(prompts), 0, prompts, task_inputs(prompts, metric))


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
    clean_store: str | None = None,
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
        sets: name -> [[layer, head], ...], {induction_score_top: k} or {direct_effect_top: k}
            (tasks.<task>.ablation_sets, or ablation_sets; stages.task_summaries.set_heads).
        mean_include_bos: as the ablate rule's.
        out: the store to write (results/<model>/tasks/<task>/sets/<ablation>.zarr, or
            results/<model>/sets/<ablation>/shard-<n>.zarr).
        attrs: the rule's provenance attributes.
        metric_json: task_metric's metric.json, when a set is picked from its induction scores.
        clean_store: the task's clean store, when a set is picked by clean direct effect.
    """
    from selfrepair.engine.sets import measure_sets
    from selfrepair.stages.task_summaries import set_heads

    heads = {
        name: [tuple(h) for h in hs]
        for name, hs in set_heads(sets, metric_json, clean_store).items()
    }
    model, data = measured(job, task, metric)
    with job.guarded(model, {"engine.batch_size": job.batch_size}):
        ds = measure_sets(
            model,
            data.rows,
            ablation,
            heads,
            batch_size=job.batch_size,
            mean_include_bos=mean_include_bos,
            task=data.inputs,
            scored=data.scored,
            progress=True,
        )
    if task is None:  # measure_sets scores a task's answers itself: a shard's rows renumbered
        ds = data.narrow(ds)
    extra = {"ablation": ablation} | ({} if task is None else {"metric": metric})
    ds.attrs.update(job.provenance(attrs, **extra))
    write_zarr(ds, out)
    return ds
