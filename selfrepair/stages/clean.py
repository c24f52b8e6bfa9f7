"""The clean_cache rule: clean direct effects of one token shard, checked against the logit; the
process_weights rule: a model's processed weights, which the later model jobs read."""

from __future__ import annotations

import logging
from typing import Any

import xarray as xr

from selfrepair.analysis.clean_layout import clean_top_layout
from selfrepair.engine.clean import clean_direct_effects, decomposition_error
from selfrepair.stages.job import ModelJob, row_coords, weights_source
from selfrepair.stages.store import write_zarr

__all__ = ["clean_cache", "process_weights"]

log = logging.getLogger("selfrepair")


def clean_cache(
    job: ModelJob,
    *,
    out: str,
    attrs: dict[str, Any],
    top_k: int | None = None,
    tolerance: float = 1e-4,
) -> xr.Dataset:
    """Clean direct effects of one shard; refuses to write if they do not sum to the logit.

    Args:
        job: the model job (one shard).
        out: the store to write (results/<model>/clean/shard-<n>.zarr).
        attrs: the rule's provenance attributes (run_attrs and the shard).
        top_k: engine.store_tokens: top: keep each head's top_k best tokens of the shard
            instead of its DE on every token (analysis.clean_layout); None: every token.
        tolerance: the largest |sum of direct effects - logit| accepted.
    """
    rows = job.rows()
    model = job.model(seq_len=rows.shape[1])
    with job.guarded(model, {"engine.batch_size": job.batch_size}):
        ds = clean_direct_effects(
            model, rows, batch_size=job.batch_size, progress=True, desc="clean"
        )
    err = decomposition_error(ds)
    log.info("max |sum of direct effects - logit| = %.3g (tolerance %.1g)", err, tolerance)
    if not err <= tolerance:
        raise ArithmeticError(
            f"direct effects miss the logit by {err:.3g} > {tolerance}: the model's dtype is too "
            "coarse for this check (use dtype: float32)"
        )
    ds = row_coords(ds, job.bounds[0])
    ds.attrs.update(job.provenance(attrs, decomposition_max_error=err))
    if top_k is not None:
        ds = clean_top_layout(ds, top_k)
    write_zarr(ds, out)
    return ds


def process_weights(job: ModelJob, *, out: str) -> None:
    """Load the model once through TransformerLens, processed as every job used to load it, and
    write its weights and config fields (models.processed), so that the model jobs after it run
    the TransformerLens-free stand-in.

    Args:
        job: the model job (its entry, checkpoint folder and threads; CPU, float32).
        out: the folder to write (resources/weights/<model>).
    """
    from selfrepair.models.processed import write_processed

    model = job.model()
    write_processed(model, out, weights_source(job.entry, job.checkpoint))
    log.info("wrote the processed weights of %s to %s", job.entry["name"], out)
