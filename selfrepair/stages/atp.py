"""The attribution-patching rules (engine.atp, beyond the paper): atp (AtP and GradDrop of every
head on one token shard, per row and on each head's top tokens) and atp_summary (against the
exact effects of the same ablation, analysis.atp).

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
from selfrepair.analysis.attribution import shard_top_mask
from selfrepair.stages.joblog import provenance, revision_of
from selfrepair.stages.store import open_shards, open_zarr, write_zarr

if TYPE_CHECKING:
    from selfrepair.stages.job import ModelJob

__all__ = ["atp", "atp_summary", "exact_on_units"]

log = logging.getLogger("selfrepair")

ROW_VARIABLES = ("atp_row", "graddrop_row", "n_scored", "metric_clean")
TOP_VARIABLES = ("atp_top", "graddrop_top")


def atp(
    job: ModelJob,
    *,
    ablation: str,
    mean_include_bos: bool,
    top_tokens: str,
    out: str,
    attrs: dict[str, Any],
    graddrop_tokens: bool = True,
) -> xr.Dataset:
    """AtP and GradDrop estimates of every head on one shard (engine.atp.measure_atp) with z'
    chosen as the ablate job of the same shard chooses it: per row (the row's summed change of
    the centred correct-token logit) and per token on each head's top tokens.

    Args:
        job: the model job (one shard).
        ablation: zero, mean or resample.
        mean_include_bos: whether the mean ablation averages over the BOS position too.
        top_tokens: the head_top_tokens store (each head's top tokens over all shards).
        out: the store to write (results/<model>/atp/<ablation>/shard-<n>.zarr).
        attrs: the rule's provenance attributes (run_attrs and the shard).
        graddrop_tokens: GradDrop per token too (engine.atp_graddrop_tokens).
    """
    from selfrepair.engine.atp import measure_atp
    from selfrepair.stages.job import row_coords

    rows = job.rows()
    model = job.model(seq_len=rows.shape[1])
    start, n_pos = job.bounds[0], rows.shape[1] - 1
    indices = open_zarr(top_tokens).token.values
    top = shard_top_mask(indices, start, rows.shape[0], n_pos)
    t0 = time.perf_counter()
    with job.guarded(model, {"engine.batch_size": job.batch_size}):
        ds = measure_atp(
            model,
            rows,
            ablation,
            top=top,
            batch_size=job.batch_size,
            mean_include_bos=mean_include_bos,
            token_graddrop=graddrop_tokens,
            progress=True,
            desc=f"AtP and GradDrop, {ablation}",
        )
    log.info("%d rows in %.1fs", rows.shape[0], time.perf_counter() - t0)
    ranked = judge.by_rank(ds, indices, start, n_pos)
    ds = row_coords(ds[list(ROW_VARIABLES)], start).merge(ranked)
    if "resample_source" in ds.coords:  # as global row numbers too
        ds = ds.assign_coords(resample_source=ds.resample_source + start)
    ds.attrs.update(job.provenance(attrs), ablation=ablation, n_pos=n_pos)
    write_zarr(ds, out)
    return ds


def exact_on_units(
    ablation_shards: Sequence[str], indices: np.ndarray
) -> tuple[xr.DataArray, xr.DataArray, xr.DataArray]:
    """The exact logit_diff of the ablate stores on the estimates' units, one layer at a time:
    summed over each row's tokens (layer, head, batch), on each head's top tokens (layer, head,
    rank), and the clean logit summed per row (batch)."""
    data = open_shards(ablation_shards, variables=("logit_diff", "logit_clean"))
    rows, top = [], []
    for layer in range(data.sizes["layer"]):
        one = data.logit_diff.isel(layer=layer).load()  # [head, batch, pos]
        rows.append(one.sum("pos", skipna=False).values)
        flat = one.values.reshape(one.shape[0], -1)
        top.append(np.take_along_axis(flat, indices[layer], axis=1))
    exact_rows = xr.DataArray(np.stack(rows), dims=("layer", "head", "batch"))
    exact_top = xr.DataArray(np.stack(top), dims=("layer", "head", "rank"))
    clean = data.logit_clean.sum("pos").load()
    return exact_rows, exact_top, clean


def atp_summary(
    *,
    atp_shards: Sequence[str],
    ablation_shards: Sequence[str],
    summary: str,
    top_tokens: str,
    top_k: int,
    out: str,
    attrs: dict[str, Any],
    tolerance: float = 1e-4,
) -> xr.Dataset:
    """Per head, AtP and GradDrop against the exact effect; per model, rank correlations,
    missed heads and how much self-repair explains (analysis.atp.atp_summary). Refuses to write
    when the two sides do not measure the same thing: the estimates' clean metric must be the
    ablate stores' clean logit summed per row, and the exact means on the estimates' units must
    be the per-head summary's (same tokens, same top tokens).

    Args:
        atp_shards: the atp stores of one (model, ablation), in shard order.
        ablation_shards: the ablate stores of the same (model, ablation).
        summary: its per-head summary (summarize_heads).
        top_tokens: the head_top_tokens store.
        top_k: figures.atp.top_k.
        out: the store to write (results/<model>/atp/<ablation>.zarr).
        attrs: the rule's provenance attributes.
        tolerance: the largest disagreement accepted (logits per token).
    """
    indices = open_zarr(top_tokens).token.values
    shards = [open_zarr(p, variables=ROW_VARIABLES + TOP_VARIABLES[:1]) for p in atp_shards]
    rows = xr.concat([shard[list(ROW_VARIABLES)] for shard in shards], "batch").load()
    present = [name for name in TOP_VARIABLES if name in shards[0]]  # GradDrop: if measured
    top = xr.Dataset(
        {name: judge.combine_ranks([shard[name].load() for shard in shards]) for name in present}
    )
    exact_rows, exact_top, clean = exact_on_units(ablation_shards, indices)
    heads = open_zarr(summary).load()
    _check_same_measure(rows, clean, exact_rows, exact_top, heads, tolerance)
    ds = judge.atp_summary(rows, top, exact_rows, exact_top, heads, top_k)
    ds.attrs = provenance(
        **attrs,
        model_revision=revision_of(heads),
        top_k=top_k,
        n_tokens=int(rows.n_scored.sum()),
        n_top_tokens=int(indices.shape[-1]),
    )
    write_zarr(ds, out)
    return ds


def _check_same_measure(rows, clean, exact_rows, exact_top, heads, tolerance) -> None:
    """Per token: the clean metric of each row, and the exact means on both units."""
    n_scored = rows.n_scored.values
    n_tokens = float(n_scored.sum())
    gaps = {
        "clean metric": _gap(rows.metric_clean.values / n_scored, clean.values / n_scored),
        "all-token mean": _gap(
            exact_rows.sum("batch").values / n_tokens, heads.mean_logit_diff.values
        ),
        "top-token mean": _gap(exact_top.mean("rank").values, heads.top_logit_diff.values),
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
