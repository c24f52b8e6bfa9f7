"""The ablate rule: every configured head of one token shard under one ablation."""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from typing import Any

import xarray as xr

from selfrepair.analysis import shards
from selfrepair.analysis.attribution import shard_top_mask
from selfrepair.config.layout import predictions
from selfrepair.engine.attribution import RepairSums
from selfrepair.engine.self_repair import measure_heads
from selfrepair.stages.job import ModelJob, row_coords
from selfrepair.stages.store import open_zarr, write_zarr
from selfrepair.stages.summaries import heads_with_picks

__all__ = ["ablate"]

log = logging.getLogger("selfrepair")


def ablate(
    job: ModelJob,
    *,
    ablation: str,
    heads_per_pass: int,
    mean_include_bos: bool,
    out: str,
    attrs: dict[str, Any],
    freeze_ln: bool = False,
    top_tokens: str | None = None,
    attribution_out: str | None = None,
    keep: dict[str, Any] | None = None,
    picks: Sequence[str] = (),
) -> xr.Dataset:
    """Every configured head of one shard under one ablation (engine.measure_heads), and with
    top_tokens every downstream component's share of each head's self-repair, from the same
    passes (engine.attribution).

    Args:
        job: the model job (one shard); its model entry's heads are measured (all if none).
        ablation: zero, mean or resample.
        heads_per_pass: heads ablated side by side in one batched pass (engine.heads_per_pass).
        mean_include_bos: whether the mean ablation averages over the BOS position too.
        out: the store to write (results/<model>/ablation/<ablation>/shard-<n>.zarr).
        attrs: the rule's provenance attributes (run_attrs and the shard).
        freeze_ln: freeze every LayerNorm after the ablated head at its clean scale.
        top_tokens: the head_top_tokens store (each head's top tokens over all shards);
            None: no attribution.
        attribution_out: the attribution store to write
            (results/<model>/attribution/<ablation>/shard-<n>.zarr), with top_tokens.
        keep: engine.store_tokens: top (with top_tokens): what the store keeps instead of
            every token (analysis.shards.top_layout): n_tokens (the run's), n_resamples and
            seed (figures.bootstrap), heads (kept per token), k and context (the
            explorer's); None: every token.
        picks: with keep, the pick records whose heads are kept per token too.
    """
    rows = job.rows()
    model = job.model(seq_len=rows.shape[1])
    sums = None
    if top_tokens is not None:
        indices = open_zarr(top_tokens).token.values
        top = shard_top_mask(indices, job.bounds[0], rows.shape[0], rows.shape[1] - 1)
        sums = RepairSums(model, top, row_offset=job.bounds[0])
    t0 = time.perf_counter()
    keys = {"engine.batch_size": job.batch_size, "engine.heads_per_pass": heads_per_pass}
    with job.guarded(model, keys):
        ds = measure_heads(
            model,
            rows,
            ablation,
            heads=job.heads,
            batch_size=job.batch_size,
            heads_per_pass=heads_per_pass,
            mean_include_bos=mean_include_bos,
            freeze_ln=freeze_ln,
            progress=True,
            desc=f"{ablation} ablation" + (" (frozen LayerNorm)" if freeze_ln else ""),
            sums=sums,
        )
    seconds = time.perf_counter() - t0
    n_tok = predictions(*rows.shape)
    log.info("%d tokens in %.1fs (%.1f ms per 1k tokens)", n_tok, seconds, 1e6 * seconds / n_tok)
    start = job.bounds[0]
    ds = row_coords(ds, start)
    if "resample_source" in ds.coords:  # as global row numbers too
        ds = ds.assign_coords(resample_source=ds.resample_source + start)
    ds.attrs.update(job.provenance(attrs))
    if keep is not None:
        ds = _top_layout(ds, open_zarr(top_tokens).token.values, keep, picks)
    if sums is not None:
        sums_ds = sums.dataset()
        sums_ds.attrs.update(job.provenance(attrs), ablation=ablation, freeze_ln=int(freeze_ln))
        write_zarr(sums_ds, attribution_out)
    write_zarr(ds, out, chunks={"layer": 1})
    return ds


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
