"""Zarr stores written atomically (temporary path, then rename) and read back as xarray."""

from __future__ import annotations

import json
import math
import os
import shutil
from collections.abc import Sequence
from pathlib import Path

import xarray as xr

ZARR_FORMAT = 2  # with consolidated metadata: read quietly by xr.open_zarr and by older zarr
# Stamped on every store written here, so that a foreign Zarr store at an output path is refused
# rather than read as if the workflow had made it.
STORE_MARK = "selfrepair_store"
STORE_VERSION = 1


def _clear_stale_tmp(path: Path) -> None:
    for stale in path.parent.glob(f"{path.name}.tmp-*"):
        shutil.rmtree(stale, ignore_errors=True)


def write_zarr(
    ds: xr.Dataset, path: str | os.PathLike, chunks: dict[str, int] | None = None
) -> None:
    """Write ds to a Zarr store at path, atomically: readers see the old store or the whole
    new one, never a half-written one (a killed job leaves only a *.tmp-PID directory).

    chunks: chunk length per dimension (others whole), e.g. {"layer": 1} so that readers can
    load one layer of many shards at a time.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    _clear_stale_tmp(path)
    tmp = path.with_name(f"{path.name}.tmp-{os.getpid()}")
    encoding = {}
    for name, var in ds.data_vars.items():
        if chunks and any(d in chunks for d in var.dims):
            encoding[name] = {"chunks": tuple(chunks.get(d, n) for d, n in var.sizes.items())}
    ds = ds.copy()
    ds.attrs[STORE_MARK] = STORE_VERSION
    # Every chunk is written, even all-NaN ones (heads not measured), so that a missing chunk
    # file means damage (open_zarr counts them) and is never read back as fill values.
    ds.to_zarr(
        tmp,
        mode="w",
        zarr_format=ZARR_FORMAT,
        consolidated=True,
        encoding=encoding,
        write_empty_chunks=True,
    )
    if path.exists():
        shutil.rmtree(path)
    os.replace(tmp, path)


def open_zarr(path: str | os.PathLike, variables: Sequence[str] = ()) -> xr.Dataset:
    """Open a store written by write_zarr, failing with a one-line message naming the fix if it
    is missing, not a Zarr store, not written by this workflow, lacks one of `variables`, or
    has lost chunk files."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path} does not exist: run the workflow stage that makes it")
    fix = "delete it and rerun the workflow to rebuild it"
    try:
        ds = xr.open_zarr(path, consolidated=True)
    except Exception as err:  # zarr raises several types for foreign or damaged stores
        raise ValueError(
            f"{path} is not a readable Zarr store ({type(err).__name__}: {err}); {fix}"
        ) from err
    if ds.attrs.get(STORE_MARK) != STORE_VERSION:
        raise ValueError(f"{path} is a Zarr store this workflow did not write; {fix}")
    missing = [v for v in variables if v not in ds.variables]
    if missing:
        raise ValueError(f"{path} lacks variables {', '.join(missing)}; {fix}")
    damaged = _missing_chunks(path)
    if damaged:
        raise ValueError(f"{path} is damaged: {damaged}; {fix}")
    return ds


def _missing_chunks(path: Path) -> str | None:
    """Which array of a Zarr v2 store has fewer chunk files than its shape needs, or None."""
    for meta in sorted(path.glob("*/.zarray")):
        array = json.loads(meta.read_text())
        expected = math.prod(
            math.ceil(n / c) for n, c in zip(array["shape"], array["chunks"], strict=True)
        )
        found = sum(
            1
            for root, _, files in os.walk(meta.parent)
            for name in files
            if not name.startswith(".")
        )
        if found < expected:
            return f"{meta.parent.name} has {found} of its {expected} chunk files"
    return None


def open_shards(
    paths: Sequence[str | os.PathLike], dim: str = "batch", variables: Sequence[str] = ()
) -> xr.Dataset:
    """Shards of one quantity concatenated along the row dimension (lazily, with dask)."""
    if not paths:
        raise ValueError("no shards given")
    shards = [open_zarr(p, variables) for p in paths]
    return xr.concat(shards, dim=dim, combine_attrs="override")


def write_text(path: str | os.PathLike, text: str) -> None:
    """Write a text file atomically (temporary name in the same directory, then rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        tmp.write_text(text)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
