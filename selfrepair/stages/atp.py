"""The attribution-patching rules (engine.atp, beyond the paper): atp (AtP and GradDrop of every
head on one token shard: per row, and per row on each head's own top tokens) and atp_summary
(against the exact effects of the same ablation, analysis.atp). The same two functions serve a
task (rules task_atp, task_atp_summary: `use rule ... with:`): its prompts are the rows, its
answers the scored positions, and every answer is each head's "top" token, as in the task's
summary (rule task_summary's top_fraction, 1), so the top units are the rows themselves.

atp_summary runs in the analysis environment (no torch), so the engine is imported inside atp
only."""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import xarray as xr

from selfrepair.analysis import atp as judge
from selfrepair.analysis.attribution import measured_heads, shard_top_mask
from selfrepair.analysis.from_shards import read_row_sums
from selfrepair.stages.joblog import SAME_WEIGHTS_KEYS, provenance, revision_of
from selfrepair.stages.store import check_same_run, open_shard_list, open_zarr, write_zarr

if TYPE_CHECKING:
    from selfrepair.stages.job import ModelJob

__all__ = ["atp", "atp_summary", "exact_on_answers", "exact_on_units", "read_estimates"]

log = logging.getLogger("selfrepair")

# What atp_summary needs of every atp store: a store from before graddrop_stored (per-layer
# rows) lacks the GradDrop ones and is reported damaged, with the rebuild hint.
VARIABLES = (
    "atp_row",
    "graddrop_row_combined",
    "graddrop_row_sum",
    "n_scored",
    "metric_clean",
    "atp_top",
    "n_top",
)
# Per shard, over its rows: added up over shards, not concatenated.
SUMS = ("graddrop_row_sum", "graddrop_top_sum")


def atp(
    job: ModelJob,
    *,
    ablations: Sequence[str],
    mean_include_bos: bool,
    out: Sequence[str],
    attrs: dict[str, Any],
    top_tokens: str | None = None,
    top_graddrop: bool = True,
    task: str | None = None,
    metric: str | None = None,
) -> dict[str, xr.Dataset]:
    """AtP and GradDrop estimates of every head on one shard, or on a task's prompts, under
    each of `ablations` from one job (engine.atp.measure_atp_kinds: the backward passes run once
    for every kind), with z' chosen as the ablate (task_ablate) job chooses it: per row (the
    change of the row's summed centred correct-token logit; a task's: of its metric summed
    over the row's answers) and per row on each head's top tokens (the change of their sum),
    the latter for the entry's `heads` only when it lists some (n_top 0 elsewhere). GradDrop is
    stored as atp_summary reads it (analysis.atp.graddrop_stored): per row combined over the
    dropped layers, per dropped layer summed over the shard's rows. A task's store also holds
    every head's per-answer estimates (atp_token, graddrop_token: on the task's `token` axis,
    analysis.tasks.scored_tokens). One store per kind, each as a job of that kind alone writes.

    Args:
        job: the model job (one shard; a task's: its `tokens` is the prompts store).
        ablations: kinds of selfrepair.ablations.KINDS (corrupted: a task's only).
        mean_include_bos: whether the mean ablation averages over the BOS position too.
        out: the stores to write, one per kind in the same order
            (results/<model>/atp/<ablation>/shard-<n>.zarr, a task's
            results/<model>/tasks/<task>/atp/<ablation>.zarr).
        attrs: the rule's provenance attributes (run_attrs and the shard).
        top_tokens: the head_top_tokens store (each head's top tokens over all shards); None
            on a task (its answers).
        top_graddrop: GradDrop on the top tokens too (engine.atp_top_graddrop).
        task, metric: the task's name and metric (correct_logit, logit_diff); None on text.
    """
    ablations, out = list(ablations), [out] if isinstance(out, str) else list(out)
    if len(out) != len(ablations):
        raise ValueError(f"atp writes one store per kind: {ablations} but {len(out)} stores")
    stores, n_pos = _estimates(
        job, ablations, mean_include_bos, top_tokens, top_graddrop, task, metric
    )
    for (ablation, ds), path in zip(stores.items(), out, strict=True):
        ds.attrs.update(job.provenance(attrs), ablation=ablation, n_pos=n_pos)
        write_zarr(ds, path)
    return stores


def _estimates(job, ablations, mean_include_bos, top_tokens, top_graddrop, task, metric):
    """atp's estimates per kind on the job's rows (stages.tasks.measured: a token shard, or a
    task's prompts), and the positions per row. The units are the dataset's: running text's
    top tokens (head_top_tokens: one backward pass per head), a task's answers (every head
    asked at each, the rows each measured head's top units: analysis.atp.task_units)."""
    from selfrepair.engine.atp import measure_atp_kinds
    from selfrepair.stages.tasks import measured

    model, data = measured(job, task, metric)
    rows, n_pos = data.rows, data.rows.shape[1] - 1
    heads = measured_heads(job.heads, (model.cfg.n_layers, model.cfg.n_heads))
    if task is None:
        top = shard_top_mask(open_zarr(top_tokens).token.values, data.start, rows.shape[0], n_pos)
        if job.heads:  # one backward pass per head: only the measured ones have an exact side
            top &= heads[:, :, None, None]
        units = {"top": top, "top_graddrop": top_graddrop}
    else:
        scored = data.scored
        per_token = np.broadcast_to(scored, (*heads.shape, *scored.shape))
        units = {"per_token": per_token, "scored": scored, "task": data.inputs}
    t0 = time.perf_counter()
    with job.guarded(model, {"engine.batch_size": job.batch_size}):
        stores = measure_atp_kinds(
            model,
            rows,
            ablations,
            **units,
            batch_size=job.batch_size,
            mean_include_bos=mean_include_bos,
            progress=True,
            desc=f"{task + ': ' if task else ''}AtP and GradDrop, {', '.join(ablations)}",
        )
    unit = "prompts" if task else "rows"
    log.info(
        "%d %s, %d kinds in %.1fs", rows.shape[0], unit, len(ablations), time.perf_counter() - t0
    )
    if task is None:
        return {a: data.narrow(judge.graddrop_stored(ds)) for a, ds in stores.items()}, n_pos
    return {
        a: judge.graddrop_stored(judge.task_units(ds, heads, top_graddrop))
        .assign_coords(batch=np.arange(rows.shape[0]))
        .assign_attrs(metric=metric)
        for a, ds in stores.items()
    }, n_pos


def exact_on_units(
    ablation_shards: Sequence[str], indices: np.ndarray
) -> tuple[xr.DataArray, xr.DataArray, xr.DataArray]:
    """The exact logit_diff of the ablate stores on the estimates' units, a shard at a time
    (analysis.shards.read_row_sums, either layout): summed over each row's tokens and over each
    row's top tokens of the head (layer, head, batch), and the clean logit summed per row
    (batch)."""
    parts = [read_row_sums(ds, indices) for ds in open_shard_list(ablation_shards)]
    sums = xr.concat(parts, "batch")
    return sums.row_logit_diff, sums.top_row_logit_diff, sums.logit_clean.sum("pos")


def exact_on_answers(
    ablation_store: str, n_rows: int
) -> tuple[xr.DataArray, xr.DataArray, xr.DataArray]:
    """exact_on_units of a task (its task_ablate store, on the answers' `token` axis): the
    exact logit_diff summed over each prompt's answers (layer, head, batch), the same as the top
    units (every answer is each head's top token), and the clean metric summed per prompt."""
    ds = open_zarr(ablation_store)[["logit_diff", "logit_clean"]].load()
    one_hot = np.zeros((ds.sizes["token"], n_rows), np.float32)
    one_hot[np.arange(ds.sizes["token"]), ds.prompt.values] = 1.0
    values = ds.logit_diff.transpose("layer", "head", "token").values
    # a product, not a NaN-skipping sum: a head not measured stays NaN, as exact_on_units'
    rows = xr.DataArray(values @ one_hot, dims=("layer", "head", "batch"))
    return rows, rows, xr.DataArray(ds.logit_clean.values @ one_hot, dims="batch")


def atp_summary(
    *,
    atp_shards: Sequence[str],
    ablation_shards: Sequence[str],
    summary: str,
    top_k: int,
    out: str,
    attrs: dict[str, Any],
    top_tokens: str | None = None,
    tolerance: float = 1e-4,
) -> xr.Dataset:
    """Per head, AtP and GradDrop against the exact effect; per model, rank correlations,
    missed heads and how much self-repair explains (analysis.atp.atp_summary). Refuses to write
    when the two sides do not measure the same thing: the estimates' clean metric must be the
    ablate stores' clean logit summed per row, and the exact means on the estimates' units must
    be the per-head summary's (same tokens, same top tokens).

    Args:
        atp_shards: the atp stores of one (model, ablation), in shard order (a task's: one).
        ablation_shards: the ablate stores of the same (model, ablation) (a task's: its
            task_ablate store).
        summary: its per-head summary (summarize_heads; a task's task_summary).
        top_tokens: the head_top_tokens store; None on a task (every answer: exact_on_answers).
        top_k: figures.atp.top_k.
        out: the store to write (results/<model>/atp/<ablation>.zarr).
        attrs: the rule's provenance attributes.
        tolerance: the largest disagreement accepted (logits per token).
    """
    # the estimates, the exact effects and what they were measured on: one model's weights
    kinds = [atp_shards[0], ablation_shards[0], summary, *([top_tokens] if top_tokens else [])]
    check_same_run(kinds, [open_zarr(p) for p in kinds], SAME_WEIGHTS_KEYS)
    estimates = read_estimates(atp_shards)
    if top_tokens is None:
        n_top_tokens = int(estimates.n_scored.sum())
        exact_rows, exact_top, clean = exact_on_answers(
            ablation_shards[0], estimates.sizes["batch"]
        )
    else:
        indices = open_zarr(top_tokens).token.values
        n_top_tokens = int(indices.shape[-1])
        exact_rows, exact_top, clean = exact_on_units(ablation_shards, indices)
    heads = open_zarr(summary).load()
    _check_same_measure(estimates, clean, exact_rows, exact_top, heads, tolerance)
    ds = judge.atp_summary(estimates, exact_rows, exact_top, heads, top_k)
    ds.attrs = provenance(
        **attrs,
        model_revision=revision_of(heads),
        top_k=top_k,
        top_k_used=ds.attrs["top_k_used"],
        n_tokens=int(estimates.n_scored.sum()),
        n_top_tokens=n_top_tokens,
    )
    write_zarr(ds, out)
    return ds


def read_estimates(atp_shards: Sequence[str]) -> xr.Dataset:
    """The atp stores of one (model, ablation) as one Dataset (loaded): the per-row variables
    concatenated along batch (checked to follow each other from row 0), the per-shard GradDrop
    sums (float64) added up over the shards.

    Args:
        atp_shards: the atp stores, in shard order.
    """
    shards = open_shard_list(atp_shards, VARIABLES)
    sums = [name for name in SUMS if name in shards[0]]
    rows = xr.concat([s.drop_vars(sums) for s in shards], "batch", combine_attrs="override")
    totals = {name: sum(s[name].load() for s in shards) for name in sums}
    return rows.load().assign(totals)


def _check_same_measure(estimates, clean, exact_rows, exact_top, heads, tolerance) -> None:
    """Per token: the clean metric of each row, and the exact means on both units."""
    n_scored = estimates.n_scored.values
    n_top = estimates.n_top.sum("batch").values
    # skipna=False: heads not measured (a model entry's `heads`) stay NaN, as in the summary
    rows, top = (x.sum("batch", skipna=False).values for x in (exact_rows, exact_top))
    with np.errstate(divide="ignore", invalid="ignore"):
        top_mean = top / n_top
    gaps = {
        "clean metric": _gap(estimates.metric_clean.values / n_scored, clean.values / n_scored),
        "all-token mean": _gap(rows / n_scored.sum(), heads.mean_logit_diff.values),
        "top-token mean": _gap(top_mean, heads.top_logit_diff.values),
        "top tokens": _gap(  # heads not measured (a model entry's `heads`) have no top tokens
            np.where(heads.top_n_tokens.values > 0, n_top, np.nan),
            np.where(heads.top_n_tokens.values > 0, heads.top_n_tokens.values, np.nan),
        ),
    }
    log.info("exact side against the head summary: %s", gaps)
    if not max(gaps.values()) <= tolerance:
        raise ArithmeticError(
            f"the AtP and exact stores do not measure the same tokens ({gaps}, tolerance "
            f"{tolerance}): rerun the atp and ablate jobs of this model"
        )


def _gap(a: np.ndarray, b: np.ndarray) -> float:
    both = np.isfinite(a) & np.isfinite(b)
    if not np.array_equal(np.isfinite(a), np.isfinite(b)):
        return float("inf")
    return float(np.abs(a[both] - b[both]).max()) if both.any() else 0.0
