"""The ablate rule (and its task variant task_ablate): every configured head of one token shard,
or of a task's prompts (stages.tasks.measured), under one ablation, with who repairs whom."""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from typing import Any

import numpy as np
import xarray as xr

from selfrepair.analysis import shards
from selfrepair.analysis.attribution import shard_top_mask
from selfrepair.config.layout import predictions
from selfrepair.engine.attribution import RepairSums
from selfrepair.engine.self_repair import measure_heads
from selfrepair.stages.job import ModelJob
from selfrepair.stages.store import open_zarr, write_zarr
from selfrepair.stages.summaries import heads_with_picks
from selfrepair.stages.tasks import Measured, measured

__all__ = ["ablate", "ablation_kinds"]

log = logging.getLogger("selfrepair")


def ablate(
    job: ModelJob,
    *,
    ablation: str | Sequence[str],
    heads_per_pass: int,
    mean_include_bos: bool,
    out: str | Sequence[str],
    attrs: dict[str, Any],
    freeze_ln: bool | Sequence[bool] = False,
    top_tokens: str | None = None,
    attribution_out: str | Sequence[str] | None = None,
    detail_out: str | None = None,
    keep: dict[str, Any] | Sequence[dict[str, Any] | None] | None = None,
    picks: Sequence[str] | Sequence[Sequence[str]] | None = None,
    task: str | None = None,
    metric: str | None = None,
) -> xr.Dataset | list[xr.Dataset]:
    """Every configured head of one shard, or of a task's prompts at its answer positions (rule
    task_ablate), under one ablation or several (engine.measure_heads), and every downstream
    component's share of each head's self-repair from the same passes (engine.attribution): on
    a shard's top tokens (with top_tokens), on a task's every answer (summed, and per answer:
    detail_out). Several kinds (rule ablate: every variant of a text shard) share the job's
    start-up, model and rows and run one after the other, each exactly as a job of that kind
    alone: the same stores, bit for bit.

    Args:
        job: the model job (one shard; a task's: its `tokens` is the prompts store); its model
            entry's heads are measured (all if none).
        ablation: a kind of selfrepair.ablations.KINDS (corrupted: a task's only), or a list of
            them; with a list, each per-kind argument (out, freeze_ln, attribution_out, keep,
            picks) is a list in the same order, or one value for every kind.
        heads_per_pass: heads ablated side by side in one batched pass (engine.heads_per_pass).
        mean_include_bos: whether the mean ablation averages over the BOS position too.
        out: the store to write (results/<model>/ablation/<ablation>/shard-<n>.zarr, a task's
            results/<model>/tasks/<task>/ablation/<ablation>.zarr).
        attrs: the rule's provenance attributes (run_attrs and the shard, or task_attrs).
        freeze_ln: freeze every LayerNorm after the ablated head at its clean scale.
        top_tokens: the head_top_tokens store (each head's top tokens over all shards);
            None on text: no attribution.
        attribution_out: the attribution store to write (results/<model>/attribution/
            <ablation>/shard-<n>.zarr, a task's .../tasks/<task>/attribution/sums-<a>.zarr).
        detail_out: a task's per-answer attribution store (.../attribution/detail-<a>.zarr).
        keep: engine.store_tokens: top (with top_tokens): what the store keeps instead of
            every token (analysis.shards.top_layout): n_tokens (the run's), n_resamples and
            seed (figures.bootstrap), heads (kept per token), k and context (the
            explorer's); None: every token.
        picks: with keep, the pick records whose heads are kept per token too.
        task, metric: the task's name and metric (correct_logit, logit_diff); None on text.

    Returns:
        The heads Dataset as written; with a list of kinds, their stores in order, opened
        lazily (no kind's arrays are held while the next runs).
    """
    kinds = ablation_kinds(
        ablation,
        out,
        freeze_ln=freeze_ln,
        attribution_out=attribution_out,
        detail_out=detail_out,
        keep=keep,
        picks=picks,
    )
    model, data = measured(job, task, metric)
    common = dict(heads_per_pass=heads_per_pass, mean_include_bos=mean_include_bos, attrs=attrs)
    common |= dict(top_tokens=top_tokens, task=task, metric=metric)
    if isinstance(ablation, str):
        return _ablate_kind(job, model, data, kinds[0], **common)
    for kind in kinds:  # each kind's arrays freed before the next: a one-kind job's memory
        _ablate_kind(job, model, data, kind, **common)
    return [open_zarr(kind["out"]) for kind in kinds]


def ablation_kinds(ablation: str | Sequence[str], out: str | Sequence[str], **per_kind: Any):
    """ablate's arguments per kind, as a list of dicts (ablation, out and per_kind's names):
    one kind (ablation a str) takes each argument as it is; several (a list) take a list per
    argument, one value per kind in order, or one value (None, False) for every kind."""
    if isinstance(ablation, str):
        return [{"ablation": ablation, "out": out, **per_kind}]
    ablations, n = list(ablation), len(ablation)
    columns = {"out": out, **per_kind}
    for name, value in columns.items():
        if isinstance(value, list | tuple) and len(value) != n:
            raise ValueError(f"ablate: {n} kinds {ablations} but {len(value)} values of {name}")
        if name == "out" and isinstance(value, str):
            raise ValueError(f"ablate: {n} kinds {ablations} but one store to write")
    return [
        {"ablation": a}
        | {k: v[i] if isinstance(v, list | tuple) else v for k, v in columns.items()}
        for i, a in enumerate(ablations)
    ]


def _ablate_kind(
    job: ModelJob,
    model,
    data: Measured,
    kind: dict[str, Any],
    *,
    heads_per_pass: int,
    mean_include_bos: bool,
    attrs: dict[str, Any],
    top_tokens: str | None,
    task: str | None,
    metric: str | None,
):
    """One kind of an ablate job on its model and rows: measured, then its stores written."""
    ablation, freeze_ln = kind["ablation"], bool(kind["freeze_ln"])
    sums = _repair_sums(model, data, top_tokens)
    t0 = time.perf_counter()
    keys = {"engine.batch_size": job.batch_size, "engine.heads_per_pass": heads_per_pass}
    frozen = " (frozen LayerNorm)" if freeze_ln else ""
    with job.guarded(model, keys):
        ds = measure_heads(
            model,
            data.rows,
            ablation,
            heads=job.heads,
            batch_size=job.batch_size,
            heads_per_pass=heads_per_pass,
            mean_include_bos=mean_include_bos,
            freeze_ln=freeze_ln,
            progress=True,
            desc=(f"{task}: " if task else "") + f"{ablation} ablation{frozen}",
            sums=sums,
            task=data.inputs,
        )
    _log_speed(predictions(*data.rows.shape), time.perf_counter() - t0)
    ds = data.narrow(ds)
    own, sums_attrs = _store_attrs(job.provenance(attrs), task, ablation, metric, freeze_ln)
    ds.attrs.update(own)
    if kind["keep"] is not None:
        top_token = open_zarr(top_tokens).token.values
        ds = _top_layout(ds, top_token, kind["keep"], kind["picks"] or ())
    if sums is not None:
        sums_ds = sums.dataset()
        sums_ds.attrs.update(sums_attrs)
        write_zarr(sums_ds, kind["attribution_out"])
    if kind["detail_out"] is not None:
        detail = sums.detail_dataset()
        detail.attrs.update(own, heads=[list(h) for h in _measured_heads(ds)])
        write_zarr(detail, kind["detail_out"])
    write_zarr(ds, kind["out"], chunks={"layer": 1})
    return ds


def _log_speed(n_tok: int, seconds: float) -> None:
    log.info("%d tokens in %.1fs (%.1f ms per 1k tokens)", n_tok, seconds, 1e6 * seconds / n_tok)


def _store_attrs(own: dict, task, ablation: str, metric, freeze_ln: bool) -> tuple[dict, dict]:
    """The attributes of the heads store and of the attribution store: a shard's folder names
    its ablation, its attribution store's attributes do; a task's stores name their ablation
    and metric, and freeze_ln only where frozen."""
    if task is None:
        return own, {**own, "ablation": ablation, "freeze_ln": int(freeze_ln)}
    own = {**own, "ablation": ablation, "metric": metric} | ({"freeze_ln": 1} if freeze_ln else {})
    return own, own


def _repair_sums(model, data: Measured, top_tokens: str | None) -> RepairSums | None:
    """Who repairs whom, on each head's top tokens of the shard (none without top_tokens), or
    on every answer of a task, kept per answer."""
    if data.prompts is not None:
        cfg, scored = model.cfg, data.scored
        top = np.broadcast_to(scored, (cfg.n_layers, cfg.n_heads, *scored.shape))
        return RepairSums(model, np.ascontiguousarray(top), keep_tokens=True, scored=scored)
    if top_tokens is None:
        return None
    rows = data.rows
    indices = open_zarr(top_tokens).token.values
    top = shard_top_mask(indices, data.start, rows.shape[0], rows.shape[1] - 1)
    return RepairSums(model, top, row_offset=data.start)


def _measured_heads(ds: xr.Dataset) -> list[tuple[int, int]]:
    measured = ~np.isnan(ds.de_clean.values).all(-1)
    return [(int(layer), int(head)) for layer, head in zip(*np.nonzero(measured), strict=True)]


def _top_layout(ds: xr.Dataset, top_token, keep: dict[str, Any], picks: Sequence[str]):
    """analysis.shards.top_layout with the rule's `keep` settings."""
    heads = heads_with_picks(keep["heads"], picks)
    return shards.top_layout(
        ds,
        top_token,
        n_tokens=int(keep["n_tokens"]),
        n_resamples=int(keep["n_resamples"]),
        seed=int(keep["seed"]),
        heads=heads,
        k=int(keep["k"]),
        context=int(keep["context"]),
    )
