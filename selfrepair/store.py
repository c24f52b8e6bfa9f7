"""Zarr stores written atomically (temporary path, then rename) and read back as xarray."""

from __future__ import annotations

import os
import shutil
from collections.abc import Sequence
from pathlib import Path

import xarray as xr

ZARR_FORMAT = 2  # with consolidated metadata: read quietly by xr.open_zarr and by older zarr


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
    ds.to_zarr(tmp, mode="w", zarr_format=ZARR_FORMAT, consolidated=True, encoding=encoding)
    if path.exists():
        shutil.rmtree(path)
    os.replace(tmp, path)


def open_zarr(path: str | os.PathLike) -> xr.Dataset:
    """Open a store written by write_zarr, failing with a one-line message if it is missing or
    not a Zarr store."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path} does not exist: run the workflow stage that makes it")
    try:
        return xr.open_zarr(path, consolidated=True)
    except Exception as err:  # zarr raises several types for foreign or damaged stores
        raise ValueError(
            f"{path} is not a readable Zarr store ({type(err).__name__}: {err}); delete it and "
            "rerun the workflow to rebuild it"
        ) from err


def open_shards(paths: Sequence[str | os.PathLike], dim: str = "batch") -> xr.Dataset:
    """Shards of one quantity concatenated along the row dimension (lazily, with dask)."""
    if not paths:
        raise ValueError("no shards given")
    return xr.concat([open_zarr(p) for p in paths], dim=dim, combine_attrs="override")


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
