"""The clean_cache rule: clean direct effects of one dataset's shard, a token shard or a task's
prompts (stages.tasks.measured), checked against the logit or metric (a task's clean metric
recorded in the store: stages.task_summaries.task_metric writes it as JSON); the
process_weights rule: a model's processed weights, which the later model jobs read."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import xarray as xr

from selfrepair.analysis.clean_layout import clean_top_layout
from selfrepair.analysis.tasks import clean_metric
from selfrepair.engine.clean import clean_direct_effects, decomposition_error
from selfrepair.stages.job import ModelJob, checkpoint_weights, weights_source
from selfrepair.stages.store import write_zarr
from selfrepair.stages.tasks import Measured, _induction_scores, measured

__all__ = ["clean_cache", "process_weights"]

log = logging.getLogger("selfrepair")


def clean_cache(
    job: ModelJob,
    *,
    out: str,
    attrs: dict[str, Any],
    top_k: int | None = None,
    task: str | None = None,
    metric: str | None = None,
    tolerance: float = 1e-4,
) -> xr.Dataset:
    """Clean direct effects of one shard, or on a task's metric at its answer positions (with
    the clean metric in the store's provenance); refuses to write if they miss the logit.

    Args:
        job: the model job (one shard; a task's: its `tokens` is the prompts store).
        out: the store to write (results/<model>/clean/shard-<n>.zarr, a task's
            results/<model>/tasks/<task>/clean/shard-000.zarr).
        attrs: the rule's provenance attributes (run_attrs and the shard, or task_attrs).
        top_k: engine.store_tokens: top: keep each head's top_k best tokens of the shard
            instead of its DE on every token (analysis.clean_layout); None: every token.
        task, metric: the task's name and metric (correct_logit, logit_diff); None on text.
        tolerance: the largest |sum of direct effects - logit| accepted.
    """
    model, data = measured(job, task, metric)
    with job.guarded(model, {"engine.batch_size": job.batch_size}):
        ds = clean_direct_effects(
            model,
            data.rows,
            batch_size=job.batch_size,
            counter=None if data.inputs is None else data.inputs.counter,
            top1=data.prompts is not None,
            progress=True,
            desc="clean",
        )
    kept = data.narrow(ds)
    err = decomposition_error(kept)
    log.info("max |sum of direct effects - logit| = %.3g (tolerance %.1g)", err, tolerance)
    if not err <= tolerance:
        raise ArithmeticError(
            f"direct effects miss the {metric or 'logit'} by {err:.3g} > {tolerance}: the "
            "model's dtype is too coarse for this check (use dtype: float32)"
        )
    numbers = {} if data.prompts is None else _task_metric(model, data, ds, metric, job.batch_size)
    ds = kept
    ds.attrs.update(job.provenance(attrs, decomposition_max_error=err, **numbers))
    if top_k is not None:
        ds = clean_top_layout(ds, top_k)
    write_zarr(ds, out)
    return ds


def _task_metric(model, data: Measured, ds: xr.Dataset, metric: str, batch_size: int) -> dict:
    """The clean metric on a task (analysis.clean_metric) from the clean pass's every position,
    and an induction task's per-head prefix-matching scores."""
    prompts = data.prompts
    numbers = clean_metric(
        ds.logit_clean.values,
        ds.top1.values,
        ds.loss.values,
        prompts.scored,
        prompts.baseline,
        metric,
    )
    if "length" in prompts.info:  # induction: each head's prefix-matching score, no ablation
        numbers["induction_scores"] = _induction_scores(model, prompts, batch_size)
    log.info("clean metric: %s", numbers)
    return numbers


def process_weights(job: ModelJob, *, out: str, checkpoints: Sequence[ModelJob] = ()) -> None:
    """Load the model once through TransformerLens, processed as every job used to load it, and
    write its weights and config fields (models.processed), so that the model jobs after it run
    the TransformerLens-free stand-in; then each of its training checkpoints, in the folder its
    jobs read (joblog.checkpoint_weights): one job imports TransformerLens for all of them, where
    a checkpoint's two model jobs would each have imported it and loaded the checkpoint.

    Args:
        job: the model job (its entry, checkpoint folder and threads; CPU, float32).
        out: the folder to write (resources/weights/<model>).
        checkpoints: the jobs of the model's training checkpoints (entries `<model>@step<N>`).
    """
    from selfrepair.models.processed import write_processed

    for one in (job, *checkpoints):
        folder = checkpoint_weights(one.entry, out)
        write_processed(one.model(), folder, weights_source(one.entry, one.checkpoint))
        log.info("wrote the processed weights of %s to %s", one.entry["name"], folder)
