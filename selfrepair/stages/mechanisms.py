"""The mechanism rules: neuron_effects, neuron_reductions, norm_ratios and self_reinforcement.

neuron_reductions runs in the analysis environment (no torch), so this module imports the
model-side code (selfrepair.mechanisms, which needs torch) inside the three model stages only.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import xarray as xr

from selfrepair.analysis import mechanisms as reductions
from selfrepair.stages.joblog import provenance, revision_of
from selfrepair.stages.store import open_head_shards, open_shards, open_zarr, write_zarr

if TYPE_CHECKING:
    from selfrepair.stages.job import ModelJob

__all__ = ["neuron_effects", "neuron_reductions", "norm_ratios", "self_reinforcement"]

log = logging.getLogger("selfrepair")


def neuron_effects(
    job: ModelJob,
    *,
    heads: Sequence[Sequence[int]],
    mlp_layer: int,
    ablation: str,
    top_fraction: float,
    mean_include_bos: bool,
    out: str,
    attrs: dict[str, Any],
    tolerance: float = 1e-4,
) -> xr.Dataset:
    """Neuron DEs of the configured heads on their top tokens, over every shard (ablating within
    each shard, as the ablation stage does); refuses to write if the neurons do not sum to the
    layer's direct effect minus its bias.

    Args:
        job: the model job (every shard).
        heads: the heads whose top tokens are read ([layer, head] pairs).
        mlp_layer: the MLP layer whose neurons are measured (negative: from the end).
        ablation: how the heads are ablated.
        top_fraction: share of each head's tokens, by clean direct effect, kept.
        mean_include_bos: whether the mean ablation averages over the BOS position too.
        out: the store to write (results/<model>/neurons/selected.zarr).
        attrs: the rule's provenance attributes.
        tolerance: the largest |sum of neurons + bias - MLP DE| accepted.
    """
    from selfrepair.mechanisms.neurons import resolve_probes, select_neuron_tokens, sum_error

    model = job.model()
    probes = resolve_probes(model, heads, mlp_layer)
    n_tokens = job.n_predictions()
    t0 = time.perf_counter()
    ds = select_neuron_tokens(
        model,
        job.each_shard(),
        ablation,
        probes,
        n_tokens=n_tokens,
        top_fraction=top_fraction,
        batch_size=job.batch_size,
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
    ds.attrs.update(job.provenance(attrs, neuron_sum_max_error=err))
    write_zarr(ds, out, chunks={"head": 1, "selection": 1})
    return ds


def neuron_reductions(
    *,
    selected: str,
    thresholds: Sequence[float],
    top_n: int,
    out: str,
    attrs: dict[str, Any],
) -> xr.Dataset:
    """The reductions Figs 7, 8 and 15 draw, from the neuron_effects store.

    Args:
        selected: the neuron_effects store.
        thresholds: shares of a head's repair a set of neurons must reach (Fig 8).
        top_n: the per-token top neurons counted (Fig 7).
        out: the store to write (results/<model>/neurons/reductions.zarr).
        attrs: the rule's provenance attributes.
    """
    source = open_zarr(selected).load()
    ds = reductions.neuron_reductions(source, thresholds=thresholds, top_n=top_n)
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


def norm_ratios(
    job: ModelJob,
    *,
    engine_shards: Sequence[str],
    heads: Sequence[Sequence[int]],
    ablation: str,
    top_fraction: float,
    mean_include_bos: bool,
    out: str,
    attrs: dict[str, Any],
) -> xr.Dataset:
    """Residual norms of the configured heads' ablated runs (shard by shard, as the ablation
    stage ablates) beside the ablation stage's LN scales, DEs and logit differences.

    Args:
        job: the model job (every shard, in the order of engine_shards).
        engine_shards: the ablate rule's stores of this ablation.
        heads: the heads ablated ([layer, head] pairs).
        ablation: how the heads are ablated (that of engine_shards).
        top_fraction: share of each head's tokens, by clean direct effect, called top tokens.
        mean_include_bos: whether the mean ablation averages over the BOS position too.
        out: the store to write (results/<model>/norms/<ablation>.zarr).
        attrs: the rule's provenance attributes.
    """
    from selfrepair.mechanisms import norms

    model = job.model()
    parts = []
    for start, rows in job.each_shard():
        part = norms.residual_norms(
            model,
            rows,
            ablation,
            heads,
            batch_size=job.batch_size,
            mean_include_bos=mean_include_bos,
        )
        parts.append(part.assign_coords(batch=np.arange(start, start + rows.shape[0])))
    resid = xr.concat(parts, "batch")
    engine = open_head_shards(engine_shards, job.entry["name"], None, norms.ENGINE_VARIABLES, heads)
    clean = open_shards(engine_shards, variables=("ln_scale_clean",))
    engine["ln_scale_clean"] = clean.ln_scale_clean
    ds = norms.norm_ratios(engine, resid, heads, top_fraction=top_fraction)
    ds.attrs.update(job.provenance(attrs, ablation=ablation, n_tokens=int(ds.de_clean[0].size)))
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


def self_reinforcement(
    job: ModelJob,
    *,
    heads: Sequence[Sequence[int]],
    second_half: bool,
    scales: Sequence[float],
    rows: int,
    seq_len: int,
    out: str,
    attrs: dict[str, Any],
) -> xr.Dataset:
    """The self-reinforcement experiment on the first `rows` token rows cut to `seq_len`.

    Args:
        job: the model job (it reads rows from the start of the corpus, not by shard).
        heads: the configured heads ([layer, head] pairs).
        second_half: add every head of the model's second half.
        scales: the factors each head's output is scaled by.
        rows: token rows used.
        seq_len: tokens kept per row.
        out: the store to write (results/<model>/reinforcement/reinforcement.zarr).
        attrs: the rule's provenance attributes.
    """
    from selfrepair.mechanisms import reinforcement

    model = job.model()
    chosen = reinforcement.reinforcement_heads(model, heads, second_half)
    token_rows = job.rows(0, rows)[:, :seq_len]
    t0 = time.perf_counter()
    ds = reinforcement.reinforcement_with_classes(
        reinforcement.self_reinforcement(
            model, token_rows, chosen, scales, batch_size=job.batch_size
        )
    )
    seconds = time.perf_counter() - t0
    counts = {c: int((ds.classification == c).sum()) for c in np.unique(ds.classification)}
    log.info(
        "%d heads x %d scales in %.1fs; classes: %s", len(chosen), len(scales), seconds, counts
    )
    ds.attrs.update(job.provenance(attrs, rows=rows, seq_len=seq_len))
    write_zarr(ds, out)
    return ds
