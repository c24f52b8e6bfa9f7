"""Workflow stages of the mechanism experiments, as plain functions the Snakemake scripts call
(so each can also be run and tested without Snakemake)."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import torch
import xarray as xr

from selfrepair.analysis.mechanisms import neuron_reductions
from selfrepair.mechanisms.neurons import resolve_probes, select_neuron_tokens, sum_error
from selfrepair.mechanisms.norms import norm_ratios, residual_norms
from selfrepair.mechanisms.reinforcement import (
    reinforcement_heads,
    reinforcement_with_classes,
    self_reinforcement,
)
from selfrepair.stages.ablation import model_for, read_token_rows
from selfrepair.stages.joblog import model_revision, provenance, revision_of
from selfrepair.stages.store import open_shards, open_zarr, write_zarr

log = logging.getLogger("selfrepair")


def _shards(tokens: str, bounds: Sequence[Sequence[int]]) -> Iterator[tuple[int, torch.Tensor]]:
    for start, stop in bounds:
        yield int(start), read_token_rows(tokens, int(start), int(stop))


def _n_predictions(tokens: str, bounds: Sequence[Sequence[int]]) -> int:
    """Predictions in the rows of `bounds`: each row of n tokens predicts n - 1."""
    seq_len = open_zarr(tokens).tokens.shape[1]
    return sum(int(stop) - int(start) for start, stop in bounds) * (seq_len - 1)


def neuron_stage(
    *,
    tokens: str,
    bounds: Sequence[Sequence[int]],
    entry: dict[str, Any],
    checkpoint: str | None,
    device: str,
    dtype: str,
    heads: Sequence[Sequence[int]],
    mlp_layer: int,
    ablation: str,
    top_fraction: float,
    batch_size: int,
    mean_include_bos: bool,
    out: str,
    attrs: dict[str, Any],
    tolerance: float = 1e-4,
) -> xr.Dataset:
    """Neuron DEs of the configured heads on their top tokens, over every shard (ablating within
    each shard, as the ablation stage does); refuses to write if the neurons do not sum to the
    layer's direct effect minus its bias."""
    model = model_for(entry, checkpoint, device, dtype)
    probes = resolve_probes(model, heads, mlp_layer)
    n_tokens = _n_predictions(tokens, bounds)
    t0 = time.perf_counter()
    ds = select_neuron_tokens(
        model,
        _shards(tokens, bounds),
        ablation,
        probes,
        n_tokens=n_tokens,
        top_fraction=top_fraction,
        batch_size=batch_size,
        mean_include_bos=mean_include_bos,
    )
    seconds = time.perf_counter() - t0
    err = sum_error(ds)
    log.info(
        "%d heads, %d tokens in %.1fs; max |sum of neurons + bias - MLP DE| = %.3g",
        len(probes),
        n_tokens,
        seconds,
        err,
    )
    if not err <= tolerance:
        raise ArithmeticError(
            f"neuron direct effects miss the MLP layer's by {err:.3g} > {tolerance}: the "
            "model's dtype is too coarse for this check (use dtype: float32)"
        )
    revision = model_revision(entry["name"], checkpoint)
    ds.attrs.update(provenance(**attrs, model_revision=revision, neuron_sum_max_error=err))
    write_zarr(ds, out, chunks={"head": 1, "selection": 1})
    return ds


def neuron_reduction_stage(
    *,
    selected: str,
    thresholds: Sequence[float],
    top_n: int,
    out: str,
    attrs: dict[str, Any],
) -> xr.Dataset:
    source = open_zarr(selected).load()
    ds = neuron_reductions(source, thresholds=thresholds, top_n=top_n)
    ds.attrs.update(provenance(**attrs, model_revision=revision_of(source)))
    for i, head in enumerate(ds["head"].values):
        for sel in ds["selection"].values:
            log.info(
                "%s %s: the most frequent neuron is in the per-token top %d on %.1f%% of tokens",
                head,
                sel,
                top_n,
                100 * float(ds.max_top_n_frequency.isel(head=i).sel(selection=sel)),
            )
    write_zarr(ds, out)
    return ds


def norms_stage(
    *,
    tokens: str,
    bounds: Sequence[Sequence[int]],
    engine_shards: Sequence[str],
    entry: dict[str, Any],
    checkpoint: str | None,
    device: str,
    dtype: str,
    heads: Sequence[Sequence[int]],
    ablation: str,
    top_fraction: float,
    batch_size: int,
    mean_include_bos: bool,
    out: str,
    attrs: dict[str, Any],
) -> xr.Dataset:
    """Residual norms of the configured heads' ablated runs (shard by shard, as the ablation
    stage ablates) beside the ablation stage's LN scales, DEs and logit differences."""
    model = model_for(entry, checkpoint, device, dtype)
    parts = []
    for start, rows in _shards(tokens, bounds):
        part = residual_norms(
            model,
            rows,
            ablation,
            heads,
            batch_size=batch_size,
            mean_include_bos=mean_include_bos,
        )
        parts.append(part.assign_coords(batch=np.arange(start, start + rows.shape[0])))
    norms = xr.concat(parts, "batch")
    ds = norm_ratios(open_shards(engine_shards), norms, heads, top_fraction=top_fraction)
    ds.attrs.update(
        provenance(
            **attrs,
            model_revision=model_revision(entry["name"], checkpoint),
            ablation=ablation,
            n_tokens=int(ds.de_clean[0].size),
        )
    )
    for i, head in enumerate(ds["head"].values):
        log.info(
            "%s %s: clean/ablated LN scale > 1 on %.2f%% of top tokens; ablated/clean norm "
            "> 1 on %.2f%% of all tokens",
            head,
            ablation,
            100 * float(ds.share_ln_scale_ratio_above_1.isel(head=i).sel(subset="top")),
            100 * float(ds.share_resid_norm_ratio_above_1.isel(head=i).sel(subset="all")),
        )
    write_zarr(ds, out)
    return ds


def reinforcement_stage(
    *,
    tokens: str,
    entry: dict[str, Any],
    checkpoint: str | None,
    device: str,
    dtype: str,
    heads: Sequence[Sequence[int]],
    second_half: bool,
    scales: Sequence[float],
    rows: int,
    seq_len: int,
    batch_size: int,
    out: str,
    attrs: dict[str, Any],
) -> xr.Dataset:
    """The self-reinforcement experiment on the first `rows` token rows cut to `seq_len`."""
    model = model_for(entry, checkpoint, device, dtype)
    chosen = reinforcement_heads(model, heads, second_half)
    token_rows = read_token_rows(tokens, 0, rows)[:, :seq_len]
    t0 = time.perf_counter()
    ds = reinforcement_with_classes(
        self_reinforcement(model, token_rows, chosen, scales, batch_size=batch_size)
    )
    seconds = time.perf_counter() - t0
    counts = {c: int((ds.classification == c).sum()) for c in np.unique(ds.classification)}
    log.info(
        "%d heads x %d scales in %.1fs; classes: %s", len(chosen), len(scales), seconds, counts
    )
    revision = model_revision(entry["name"], checkpoint)
    ds.attrs.update(provenance(**attrs, model_revision=revision, rows=rows, seq_len=seq_len))
    write_zarr(ds, out)
    return ds
