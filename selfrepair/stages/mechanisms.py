"""The mechanism rules: neuron_effects (which also reduces its neurons for Figs 7, 8 and 15),
norm_ratios and self_reinforcement.

The model-side code (selfrepair.mechanisms, which needs torch) is imported inside the model
stages only, so that reduce_neurons loads in the analysis environment (no torch) too.
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
from selfrepair.stages.store import open_head_shards, open_shards, write_zarr

if TYPE_CHECKING:
    from selfrepair.stages.job import ModelJob

__all__ = ["neuron_effects", "norm_ratios", "reduce_neurons", "self_reinforcement"]

log = logging.getLogger("selfrepair")


def neuron_effects(
    job: ModelJob,
    *,
    heads: Sequence[Sequence[int]],
    mlp_layer: int,
    ablation: str,
    top_fraction: float,
    mean_include_bos: bool,
    thresholds: Sequence[float],
    top_n: int,
    store_tokens: str,
    out: str,
    reductions_out: str,
    attrs: dict[str, Any],
    tolerance: float = 1e-4,
) -> tuple[xr.Dataset, xr.Dataset]:
    """Neuron DEs of the configured heads on their top tokens, over every shard (ablating within
    each shard, as the ablation stage does), and their reductions for Figs 7, 8 and 15; refuses
    to write if the neurons do not sum to the layer's direct effect minus its bias. Returns
    (the selected store's dataset, the reductions) as written.

    Args:
        job: the model job (every shard).
        heads: the heads whose top tokens are read ([layer, head] pairs).
        mlp_layer: the MLP layer whose neurons are measured (negative: from the end).
        ablation: how the heads are ablated.
        top_fraction: share of each head's tokens, by clean direct effect, kept.
        mean_include_bos: whether the mean ablation averages over the BOS position too.
        thresholds: shares of a head's repair a set of neurons must reach (Fig 8).
        top_n: the per-token top neurons counted (Fig 7).
        store_tokens: engine.store_tokens: "all" keeps every neuron's DEs on the selected
            tokens in `out`, "top" all but those (mechanisms.neurons.stored_selection).
        out: the selected store to write (results/<model>/neurons/selected.zarr).
        reductions_out: the reductions to write (results/<model>/neurons/reductions.zarr).
        attrs: the rule's provenance attributes.
        tolerance: the largest |sum of neurons + bias - MLP DE| accepted.
    """
    from selfrepair.mechanisms.neurons import stored_selection

    ds = _select_neurons(
        job,
        heads,
        top_n=top_n,
        mlp_layer=mlp_layer,
        ablation=ablation,
        top_fraction=top_fraction,
        mean_include_bos=mean_include_bos,
        attrs=attrs,
    )
    err = ds.attrs["neuron_sum_max_error"]
    if not err <= tolerance:
        raise ArithmeticError(
            f"neuron direct effects miss the MLP layer's by {err:.3g} > {tolerance}: the "
            "model's dtype is too coarse for this check (use dtype: float32)"
        )
    # Reduced from the arrays in memory (under top they are never written), and before either
    # store is written, so that a failing reduction leaves none.
    reduced = reduce_neurons(ds, thresholds=thresholds, top_n=top_n, attrs=attrs)
    kept = stored_selection(ds, store_tokens)
    write_zarr(kept, out, chunks={"head": 1, "selection": 1})
    write_zarr(reduced, reductions_out)
    return kept, reduced


def _select_neurons(
    job: ModelJob,
    heads: Sequence[Sequence[int]],
    *,
    top_n: int,
    mlp_layer: int,
    ablation: str,
    top_fraction: float,
    mean_include_bos: bool,
    attrs: dict[str, Any],
) -> xr.Dataset:
    """select_neuron_tokens over every shard of the job, with the store's provenance and the
    neurons' sum error (attribute neuron_sum_max_error). The model lives in this frame only: it
    is freed before the reductions, whose float64 copies of the neuron arrays are the job's
    largest allocation."""
    from selfrepair.mechanisms.neurons import resolve_probes, select_neuron_tokens, sum_error

    model = job.model()
    probes = resolve_probes(model, heads, mlp_layer)
    reductions.check_top_n(top_n, model.cfg.d_mlp)  # before the passes, not after them
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
    ds.attrs.update(job.provenance(attrs, neuron_sum_max_error=err))
    return ds


def reduce_neurons(
    selected: xr.Dataset, *, thresholds: Sequence[float], top_n: int, attrs: dict[str, Any]
) -> xr.Dataset:
    """The reductions Figs 7, 8 and 15 draw (analysis.mechanisms.neuron_reductions) of a
    selected dataset with its neuron arrays, with the provenance of the rule and the selected
    dataset's model revision; logs each head's most frequent top neuron.

    Args:
        selected: select_neuron_tokens' dataset, with the attributes _select_neurons adds.
        thresholds: shares of a head's repair a set of neurons must reach (Fig 8).
        top_n: the per-token top neurons counted (Fig 7).
        attrs: the rule's provenance attributes.
    """
    ds = reductions.neuron_reductions(selected, thresholds=thresholds, top_n=top_n)
    ds.attrs.update(provenance(**attrs, model_revision=revision_of(selected)))
    for i, head in enumerate(ds["head"].values):
        for sel in ds["selection"].values:
            log.info(
                "%s %s: the most frequent neuron is in the per-token top %d on %.1f%% of tokens",
                head,
                sel,
                top_n,
                100 * float(ds.max_top_n_frequency.isel(head=i).sel(selection=sel)),
            )
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
