"""What every model job shares (the rules clean_cache, ablate, neuron_effects, norm_ratios and
self_reinforcement): one description of the job, `ModelJob` (tokens, rows, model entry,
checkpoint, device, dtype, batch size, threads), built once from the `snakemake` object or
directly (tests), and the plumbing around the model: loading and checking it, reading token
rows, and turning NaN and out-of-memory errors into lines that name the shard and config keys."""

from __future__ import annotations

import contextlib
import ctypes
import logging
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import xarray as xr

from selfrepair.config import ConfigError, missing_head
from selfrepair.config.layout import predictions
from selfrepair.models.forward import NonFiniteActivation
from selfrepair.models.loading import load_model, resolve_device, resolve_dtype
from selfrepair.stages.joblog import (
    checkpoint_folder,
    checkpoint_weights,
    hub_revision,
    model_revision,
    weights_provenance,
)
from selfrepair.stages.store import open_zarr

if TYPE_CHECKING:
    from transformer_lens import HookedTransformer

__all__ = [
    "ModelJob",
    "check_model_fits",
    "checkpoint_folder",
    "checkpoint_weights",
    "hub_revision",
    "in_shard",
    "keep_freed_memory",
    "memory_hint",
    "model_for",
    "read_token_rows",
    "row_coords",
    "set_threads",
    "weights_source",
]

log = logging.getLogger("selfrepair")

Bounds = tuple[int, int]


def _as_shards(bounds: Sequence[int] | Sequence[Sequence[int]] | None) -> tuple[Bounds, ...]:
    """One shard's [start, stop) or a list of them, as a tuple of (start, stop) pairs."""
    if not bounds:
        return ()
    if isinstance(bounds[0], Sequence):
        return tuple((int(start), int(stop)) for start, stop in bounds)
    start, stop = bounds
    return ((int(start), int(stop)),)


@dataclass(frozen=True)
class ModelJob:
    """One job that runs a model over token rows, as its rule describes it.

    Args:
        tokens: path of the tokenized corpus (tokens.zarr).
        entry: the model's config entry (name, heads, ...).
        batch_size: rows per forward pass (engine.batch_size or the model's own).
        checkpoint: a local checkpoint folder (trained demo models), else None for the hub.
        device: config key device ("auto", "cpu", "cuda", ...).
        dtype: config key dtype.
        shards: row bounds [start, stop) of the token shards the job reads: one for the shard
            jobs (clean_cache, ablate), every shard for the mechanism jobs, none when the job
            reads rows from the start (self_reinforcement).
        threads: torch threads (the rule's threads); None leaves torch's setting alone.
        weights: the model's processed-weights folder (rule process_weights): the job runs the
            TransformerLens-free stand-in read from it; None: the model is loaded through
            TransformerLens.

    A training checkpoint's entry (selfrepair.config.checkpoints: key `<model>@step<N>`) has
    `checkpoint` {model, step, and revision, path or subdir}: its weights are its model's at that
    hub revision, that folder, or that subfolder of the trained model's `checkpoint`.
    """

    tokens: str
    entry: dict[str, Any]
    batch_size: int
    checkpoint: str | None = None
    device: str = "cpu"
    dtype: str = "float32"
    shards: tuple[Bounds, ...] = field(default=())
    threads: int | None = None
    weights: str | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "shards", _as_shards(self.shards))

    @classmethod
    def from_snakemake(cls, smk: Any) -> ModelJob:
        """The job of a Snakemake `script:` rule: input tokens (and model_dir for a trained
        model), params model, bounds (if any), batch_size, device, dtype, and its threads."""
        return cls(
            tokens=smk.input.tokens,
            entry=smk.params.model,
            batch_size=smk.params.batch_size,
            checkpoint=checkpoint_folder(smk.params.model, smk.input.get("model_dir")),
            device=smk.params.device,
            dtype=smk.params.dtype,
            shards=smk.params.get("bounds"),
            threads=smk.threads,
            weights=checkpoint_weights(smk.params.model, smk.input.get("weights")),
        )

    @property
    def bounds(self) -> Bounds:
        """The rows [start, stop) of a one-shard job."""
        if len(self.shards) != 1:
            raise ValueError(f"a shard job reads one shard, not {len(self.shards)}")
        return self.shards[0]

    @property
    def heads(self) -> list[tuple[int, int]] | None:
        """The model entry's configured heads (None: every head)."""
        heads = self.entry.get("heads")
        return [tuple(h) for h in heads] if heads else None

    def rows(self, start: int | None = None, stop: int | None = None) -> torch.Tensor:
        """Token rows [start, stop) (default: the one shard's) as a LongTensor."""
        if start is None:
            start, stop = self.bounds
        return read_token_rows(self.tokens, start, stop)

    def each_shard(self) -> Iterator[tuple[int, torch.Tensor]]:
        """(first row, token rows) of every shard, one shard at a time."""
        for start, stop in self.shards:
            yield start, read_token_rows(self.tokens, start, stop)

    def n_predictions(self) -> int:
        """Predictions in the job's shards: each row of n tokens predicts n - 1."""
        seq_len = open_zarr(self.tokens).tokens.shape[1]
        return predictions(sum(stop - start for start, stop in self.shards), seq_len)

    def model(self, seq_len: int | None = None) -> HookedTransformer:
        """The job's model on its device, with the job's threads (model_for)."""
        set_threads(self.threads)
        keep_freed_memory()
        if self.weights is None:
            return model_for(self.entry, self.checkpoint, self.device, self.dtype, seq_len=seq_len)
        return standin_for(self, seq_len)

    def provenance(self, attrs: dict[str, Any], **extra: Any) -> dict[str, Any]:
        """The store attributes: the rule's attrs, the weights' revision, then the stage's own
        (joblog.weights_provenance)."""
        return weights_provenance(self.entry, self.checkpoint, attrs, **extra)

    @contextlib.contextmanager
    def guarded(self, model: HookedTransformer, keys: dict[str, Any]) -> Iterator[None]:
        """memory_hint on the model's device naming `keys`, and (for a one-shard job) in_shard."""
        with contextlib.ExitStack() as stack:
            if len(self.shards) == 1:
                stack.enter_context(in_shard(self.tokens, self.bounds))
            stack.enter_context(memory_hint(str(model.cfg.device), keys))
            yield


def row_coords(ds: xr.Dataset, start: int) -> xr.Dataset:
    """Global row numbers as the batch coordinate, so shards concatenate into one index."""
    return ds.assign_coords(batch=np.arange(start, start + ds.sizes["batch"]))


def set_threads(threads: int | None) -> None:
    if threads:
        torch.set_num_threads(int(threads))


# mallopt's parameters (glibc's <malloc.h>)
M_TRIM_THRESHOLD = -1
M_MMAP_MAX = -4


def keep_freed_memory() -> bool:
    """Have the C library's malloc keep the memory the job frees for its next allocations.

    glibc serves an allocation above its mmap threshold (an MLP activation of the demo's
    stacked ablated passes, [16k, 512] float32, is 32 MiB) with fresh pages from the kernel and
    returns them when it is freed, so each pass pays a page fault and a zeroing per 4 KiB it
    touches: a sixth of a demo ablate job's time (docs/speed.md). Taking every allocation from
    the heap and never trimming it lets each pass reuse the pages of the one before; the job's
    resident memory stays near its largest pass's (a few percent above it). Only where memory comes from changes, never a number.
    Returns whether it applied (not where the C library has no mallopt: macOS, musl).
    """
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (AttributeError, OSError, TypeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return bool(mallopt(M_MMAP_MAX, 0)) and bool(mallopt(M_TRIM_THRESHOLD, 2**31 - 1))


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
) -> HookedTransformer:
    """The configured model: a local/trained checkpoint when given, else the hub name. Checked
    against the config (seq_len, heads) before any work is done with it."""
    dev = resolve_device(device)
    t0 = time.perf_counter()
    ckpt = entry.get("checkpoint") or {}
    model = load_model(
        ckpt.get("model", entry["name"]),
        path=checkpoint,
        device=dev,
        dtype=resolve_dtype(dtype, dev),
        revision=ckpt.get("revision"),
    )
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


def weights_source(entry: dict[str, Any], checkpoint: str | None) -> dict[str, Any]:
    """What a model's processed weights are made from, recorded in their file and compared by
    every job that reads it: the model loaded, its hub revision or the digest of its local
    weights, and the TransformerLens version that processed them."""
    from importlib.metadata import version

    ckpt = entry.get("checkpoint") or {}
    name = ckpt.get("model", entry["name"])
    if "revision" in ckpt:
        revision = hub_revision(name, ckpt["revision"])
    else:
        revision = model_revision(name, checkpoint)
    return {
        "model": name,
        "revision": ckpt.get("revision"),
        "model_revision": revision,
        "transformer_lens": version("transformer_lens"),
    }


def standin_for(job: ModelJob, seq_len: int | None = None):
    """The job's model as the TransformerLens-free stand-in read from its processed weights
    (refused in one line when they are missing, damaged or made from other weights), checked
    against the config as model_for checks; through TransformerLens (model_for) when the
    file says the stand-in cannot run it."""
    from selfrepair.models.processed import read_processed, unsupported_reason

    source = weights_source(job.entry, job.checkpoint)
    if reason := unsupported_reason(job.weights, source):
        log.info("loading %s through TransformerLens: %s", job.entry["name"], reason)
        return model_for(job.entry, job.checkpoint, job.device, job.dtype, seq_len=seq_len)
    dev = resolve_device(job.device)
    t0 = time.perf_counter()
    model = read_processed(job.weights, source, device=dev, dtype=resolve_dtype(job.dtype, dev))
    log.info(
        "read the processed weights of %s (%d layers x %d heads) on %s in %.1fs",
        job.entry["name"],
        model.cfg.n_layers,
        model.cfg.n_heads,
        dev,
        time.perf_counter() - t0,
    )
    check_model_fits(model, job.entry, seq_len)
    return model


def check_model_fits(model: HookedTransformer, entry: dict[str, Any], seq_len: int | None) -> None:
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
