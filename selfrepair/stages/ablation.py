"""Workflow stages as plain functions: the Snakemake scripts only unpack `snakemake` and call
these, so every stage can also be run (and tested) without Snakemake."""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch
import xarray as xr

from selfrepair.config.core import ConfigError, missing_head
from selfrepair.engine.clean import clean_direct_effects, decomposition_error
from selfrepair.engine.self_repair import measure_heads
from selfrepair.models.forward import NonFiniteActivation
from selfrepair.models.loading import load_model, resolve_device, resolve_dtype
from selfrepair.stages.joblog import model_revision, provenance
from selfrepair.stages.store import open_zarr, write_zarr

log = logging.getLogger("selfrepair")


def set_threads(threads: int | None) -> None:
    if threads:
        torch.set_num_threads(int(threads))


def read_token_rows(tokens_path: str, start: int, stop: int) -> torch.Tensor:
    """Rows [start, stop) of the tokenized corpus as a LongTensor [rows, seq_len]."""
    ds = open_zarr(tokens_path, variables=("tokens",))
    n = ds.sizes["row"]
    if stop > n:
        raise ValueError(
            f"{tokens_path} holds {n} rows but rows up to {stop} are needed: rerun tokenize "
            "(the data section of the config changed)"
        )
    return torch.from_numpy(ds.tokens.isel(row=slice(start, stop)).values.astype(np.int64))


def model_for(
    entry: dict[str, Any],
    checkpoint: str | None,
    device: str,
    dtype: str,
    seq_len: int | None = None,
):
    """The configured model: a local/trained checkpoint when given, else the hub name. Checked
    against the config (seq_len, heads) before any work is done with it."""
    dev = resolve_device(device)
    t0 = time.perf_counter()
    model = load_model(entry["name"], path=checkpoint, device=dev, dtype=resolve_dtype(dtype, dev))
    log.info(
        "loaded %s (%d layers x %d heads) on %s in %.1fs",
        entry["name"],
        model.cfg.n_layers,
        model.cfg.n_heads,
        dev,
        time.perf_counter() - t0,
    )
    check_model_fits(model, entry, seq_len)
    return model


def check_model_fits(model, entry: dict[str, Any], seq_len: int | None) -> None:
    """ConfigError naming the key when the config asks more of the model than it has."""
    cfg = model.cfg
    if seq_len is not None and seq_len - 1 > cfg.n_ctx:
        raise ConfigError(
            f"config key data.seq_len: {seq_len} tokens per row exceed the context of "
            f"{entry['name']} ({cfg.n_ctx} positions); lower it to at most {cfg.n_ctx + 1}"
        )
    for layer, head in entry.get("heads") or []:
        if missing := missing_head(entry["name"], layer, head, cfg.n_layers, cfg.n_heads):
            raise ConfigError(f"config key models[{entry['name']}].heads: {missing}")


@contextlib.contextmanager
def in_shard(tokens: str, bounds: tuple[int, int]) -> Iterator[None]:
    """Say which shard a NaN/inf appeared in (the engine names layer and row within it)."""
    try:
        yield
    except NonFiniteActivation as err:
        raise NonFiniteActivation(
            f"{err} [shard rows {bounds[0]}..{bounds[1] - 1} of {tokens}; row numbers above "
            "count from the shard's first row]"
        ) from err


@contextlib.contextmanager
def memory_hint(device: str, keys: dict[str, Any]) -> Iterator[None]:
    """Turn running out of device memory into one line naming the config keys to lower."""
    try:
        yield
    except (torch.OutOfMemoryError, MemoryError, RuntimeError) as err:
        text = str(err)
        if not isinstance(err, torch.OutOfMemoryError | MemoryError) and not (
            "out of memory" in text or "can't allocate memory" in text
        ):
            raise
        lower = " or ".join(f"{k} (now {v})" for k, v in keys.items())
        raise MemoryError(
            f"out of memory on {device} ({text.splitlines()[0] if text else type(err).__name__}"
            f"): lower {lower} in the config"
        ) from err


def _row_coords(ds: xr.Dataset, start: int) -> xr.Dataset:
    """Global row numbers as the batch coordinate, so shards concatenate into one index."""
    return ds.assign_coords(batch=np.arange(start, start + ds.sizes["batch"]))


def clean_shard(
    *,
    tokens: str,
    bounds: tuple[int, int],
    entry: dict[str, Any],
    checkpoint: str | None,
    device: str,
    dtype: str,
    batch_size: int,
    out: str,
    attrs: dict[str, Any],
    tolerance: float = 1e-4,
) -> xr.Dataset:
    """Clean direct effects of one shard; refuses to write if they do not sum to the logit."""
    rows = read_token_rows(tokens, *bounds)
    model = model_for(entry, checkpoint, device, dtype, seq_len=rows.shape[1])
    keys = {"engine.batch_size": batch_size}
    with in_shard(tokens, bounds), memory_hint(str(model.cfg.device), keys):
        ds = clean_direct_effects(model, rows, batch_size=batch_size, progress=True, desc="clean")
    err = decomposition_error(ds)
    log.info("max |sum of direct effects - logit| = %.3g (tolerance %.1g)", err, tolerance)
    if not err <= tolerance:
        raise ArithmeticError(
            f"direct effects miss the logit by {err:.3g} > {tolerance}: the model's dtype is too "
            "coarse for this check (use dtype: float32)"
        )
    ds = _row_coords(ds, bounds[0])
    ds.attrs.update(
        provenance(
            **attrs,
            model_revision=model_revision(entry["name"], checkpoint),
            decomposition_max_error=err,
        )
    )
    write_zarr(ds, out)
    return ds


def ablate_shard(
    *,
    tokens: str,
    bounds: tuple[int, int],
    entry: dict[str, Any],
    checkpoint: str | None,
    device: str,
    dtype: str,
    ablation: str,
    batch_size: int,
    heads_per_pass: int,
    mean_include_bos: bool,
    out: str,
    freeze_ln: bool = False,
    attrs: dict[str, Any],
) -> xr.Dataset:
    """Every configured head of one shard under one ablation (engine.measure_heads)."""
    rows = read_token_rows(tokens, *bounds)
    model = model_for(entry, checkpoint, device, dtype, seq_len=rows.shape[1])
    heads = entry.get("heads")
    t0 = time.perf_counter()
    keys = {"engine.batch_size": batch_size, "engine.heads_per_pass": heads_per_pass}
    with in_shard(tokens, bounds), memory_hint(str(model.cfg.device), keys):
        ds = measure_heads(
            model,
            rows,
            ablation,
            heads=[tuple(h) for h in heads] if heads else None,
            batch_size=batch_size,
            heads_per_pass=heads_per_pass,
            mean_include_bos=mean_include_bos,
            freeze_ln=freeze_ln,
            progress=True,
            desc=f"{ablation} ablation" + (" (frozen LayerNorm)" if freeze_ln else ""),
        )
    seconds = time.perf_counter() - t0
    n_tok = rows.shape[0] * (rows.shape[1] - 1)
    log.info("%d tokens in %.1fs (%.1f ms per 1k tokens)", n_tok, seconds, 1e6 * seconds / n_tok)
    ds = _row_coords(ds, bounds[0])
    if "resample_source" in ds.coords:  # as global row numbers too
        ds = ds.assign_coords(resample_source=ds.resample_source + bounds[0])
    ds.attrs.update(provenance(**attrs, model_revision=model_revision(entry["name"], checkpoint)))
    write_zarr(ds, out, chunks={"layer": 1})
    return ds
