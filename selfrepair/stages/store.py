"""Zarr stores written atomically (temporary path, then rename) and read back as xarray, every
chunk carrying a CRC32C checksum that is verified whenever its values are loaded, every metadata
file checked against the store's record when it is opened, and every store knowing the place it
was written to (so a store copied or renamed onto another's path is refused); and the figure
stages' openers that check a store holds the model and tokens the caption states."""

from __future__ import annotations

import functools
import os
import shutil
from collections.abc import Sequence
from pathlib import Path

import dask.array
import numcodecs
import numpy as np
import xarray as xr
import zarr

from selfrepair.stages.integrity import (
    CHUNK_CHECKSUMS,
    METADATA_DIGESTS,
    PLACE,
    chunk_record,
    first_line,
    metadata_record,
    read_consolidated,
    store_place,
    store_problem,
)
from selfrepair.stages.joblog import SAME_RUN_KEYS, run_difference

__all__ = [
    "DamagedStore",
    "MixedStores",
    "check_same_run",
    "open_by_model",
    "open_head_shards",
    "open_shard_list",
    "open_shards",
    "open_token_shards",
    "open_zarr",
    "rebuild_hint",
    "write_text",
    "write_zarr",
]

ZARR_FORMAT = 2  # with consolidated metadata: read quietly by xr.open_zarr and by older zarr
# Stamped on every store written here, so that a foreign Zarr store at an output path is refused
# rather than read as if the workflow had made it.
STORE_MARK = "selfrepair_store"
STORE_VERSION = 3  # 2: every chunk checksummed (CRC32C); 3: metadata digests and place
# Zarr v2 has one compressor per array: Blosc (Zarr's default) runs as the last filter and the
# CRC32C checksum of the compressed bytes is the "compressor", so any damaged byte of a chunk
# file fails the checksum before anything is decompressed.
COMPRESSION = numcodecs.Blosc(cname="lz4", clevel=5, shuffle=numcodecs.Blosc.SHUFFLE)
CHECKSUM = numcodecs.CRC32C()


class DamagedStore(ValueError):
    """A store that is not what write_zarr wrote: one line naming the store, array and fix."""


class MixedStores(ValueError):
    """Stores to be combined into one result that were made with other weights or config."""


def rebuild_hint(path: str | os.PathLike) -> str:
    return f"delete {path} and rerun the workflow"


def _encoding(var: xr.Variable) -> dict:
    # Strings stored as Python objects need their own serialising filter first.
    filters = [numcodecs.VLenUTF8()] if var.dtype == object else []
    return {"filters": [*filters, COMPRESSION], "compressors": [CHECKSUM]}


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
    encoding = {name: _encoding(var) for name, var in ds.variables.items()}
    for name, var in ds.data_vars.items():
        if chunks and any(d in chunks for d in var.dims):
            encoding[name]["chunks"] = tuple(chunks.get(d, n) for d, n in var.sizes.items())
    ds = ds.copy()
    # What a read store carries must not override ours, nor decide which coordinates a variable
    # lists (xarray derives them from ds alone then: the same bytes whatever ds was read from).
    drop = ("filters", "compressor", "compressors", "chunks", "preferred_chunks", "coordinates")
    for var in ds.variables.values():
        for key in drop:
            var.encoding.pop(key, None)
    ds.attrs[STORE_MARK] = STORE_VERSION
    # Every chunk is written, even all-NaN ones (heads not measured), so that a missing chunk
    # file means damage (open_zarr compares the names with the shape), never fill values.
    ds.to_zarr(
        tmp,
        mode="w",
        zarr_format=ZARR_FORMAT,
        consolidated=True,
        encoding=encoding,
        write_empty_chunks=True,
    )
    group = zarr.open_group(tmp, mode="r+", zarr_format=ZARR_FORMAT, use_consolidated=False)
    group.attrs.update({CHUNK_CHECKSUMS: chunk_record(tmp), PLACE: store_place(path)})
    group.attrs.update({METADATA_DIGESTS: metadata_record(tmp)})
    zarr.consolidate_metadata(tmp, zarr_format=ZARR_FORMAT)
    if path.exists():
        shutil.rmtree(path)
    os.replace(tmp, path)


def open_zarr(path: str | os.PathLike, variables: Sequence[str] = ()) -> xr.Dataset:
    """Open a store written by write_zarr, lazily (dask), failing with a one-line DamagedStore
    naming the store, the array and the fix if it is missing, not a Zarr store, not written by
    this workflow, has a metadata file other than the one written (store_problem), was written
    at another place (copied or renamed onto this path), lacks one of `variables`, lacks a chunk
    file or holds a stray file; and, whenever values are loaded later, if a chunk fails its
    checksum or cannot be decoded."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path} does not exist: run the workflow stage that makes it")
    consolidated = read_consolidated(path)
    if consolidated is None:
        raise DamagedStore(
            f"{path} is damaged: its consolidated metadata .zmetadata is missing or cannot be "
            f"read; {rebuild_hint(path)}"
        )
    if (consolidated.get(".zattrs") or {}).get(STORE_MARK) != STORE_VERSION:
        raise DamagedStore(
            f"{path} is a Zarr store this workflow did not write (or an older version of it "
            f"did); {rebuild_hint(path)}"
        )
    if problem := store_problem(path, consolidated):
        raise DamagedStore(f"{path} is damaged: {problem}; {rebuild_hint(path)}")
    try:
        # No default indexes: they would load coordinates here, past the checks below.
        ds = xr.open_zarr(path, consolidated=True, chunks=None, create_default_indexes=False)
    except Exception as err:  # zarr raises several types for foreign or damaged stores
        raise DamagedStore(
            f"{path} is not a readable Zarr store ({type(err).__name__}: {first_line(err)}); "
            f"{rebuild_hint(path)}"
        ) from err
    missing = [v for v in variables if v not in ds.variables]
    if missing:
        raise DamagedStore(f"{path} lacks variables {', '.join(missing)}; {rebuild_hint(path)}")
    attrs = {k: v for k, v in ds.attrs.items() if k not in (CHUNK_CHECKSUMS, METADATA_DIGESTS)}
    checked = {name: _checked(var, path, name) for name, var in ds.variables.items()}
    # Building the Dataset makes the dimension indexes, loading those coordinates (checked).
    return xr.Dataset(
        {name: checked[name] for name in ds.data_vars},
        coords={name: checked[name] for name in ds.coords},
        attrs=attrs,
    )


def _checked(var: xr.Variable, path: Path, name: str) -> xr.Variable:
    """var as a dask array in its stored chunks whose every chunk read turns a codec or
    checksum failure into DamagedStore."""
    chunks = dict(zip(var.dims, var.encoding.get("chunks", var.shape), strict=True))
    getitem = functools.partial(_checked_getitem, store=str(path), array=name)
    return var.chunk(chunks, from_array_kwargs={"getitem": getitem})


def _checked_getitem(a, b, asarray=True, lock=None, *, store: str, array: str):
    """dask's getter for one chunk of `array` in `store` (a module-level function, so that
    dask can name and pickle the task)."""
    try:
        return dask.array.core.getter(a, b, asarray=asarray, lock=lock)
    except MemoryError:
        raise
    except Exception as err:  # numcodecs raises RuntimeError/ValueError for damaged bytes
        what = (
            "fails its CRC32C checksum"
            if "checksum" in str(err)
            else f"cannot be decoded ({type(err).__name__}: {first_line(err)})"
        )
        raise DamagedStore(
            f"{store} is damaged: a chunk of array {array} {what}; {rebuild_hint(store)}"
        ) from err


def open_shards(
    paths: Sequence[str | os.PathLike], dim: str = "batch", variables: Sequence[str] = ()
) -> xr.Dataset:
    """Shards of one quantity concatenated along the row dimension (lazily, with dask)."""
    if not paths:
        raise ValueError("no shards given")
    shards = [open_zarr(p, variables) for p in paths]
    check_same_run(paths, shards)
    _check_rows(paths, shards, dim)
    return xr.concat(shards, dim=dim, combine_attrs="override")


def open_shard_list(
    paths: Sequence[str | os.PathLike], variables: Sequence[str] = ()
) -> list[xr.Dataset]:
    """Shards opened one by one (lazily), checked to follow each other from row 0 as
    open_shards checks them: for readers that take one shard at a time."""
    if not paths:
        raise ValueError("no shards given")
    shards = [open_zarr(p, variables) for p in paths]
    check_same_run(paths, shards)
    _check_rows(paths, shards, "batch")
    return shards


def check_same_run(
    paths: Sequence[str | os.PathLike],
    stores: Sequence[xr.Dataset],
    keys: Sequence[str] = SAME_RUN_KEYS,
) -> None:
    """Stores combined into one result (shards of one quantity; with keys SAME_WEIGHTS_KEYS,
    the stores of different kinds one job reads) must have been made with the same weights and
    config (joblog.run_difference): fails with a one-line MixedStores naming the first and a
    store that differs, and the fix.

    Args:
        paths: the stores' paths.
        stores: the stores, opened (open_zarr), in the order of paths.
        keys: the provenance attributes that must agree.
    """
    for path, ds in zip(paths[1:], stores[1:], strict=True):
        if difference := run_difference(stores[0].attrs, ds.attrs, keys):
            raise MixedStores(
                f"{paths[0]} and {path} were made with different {difference}, so they are "
                "not combined: delete the one made with the old weights or config (or both) "
                "and rerun the workflow"
            )


def _check_rows(paths: Sequence[str | os.PathLike], shards: list[xr.Dataset], dim: str) -> None:
    """Shards whose `dim` is numbered by global rows (the token shards) must follow each other
    from row 0 without a gap or repeat: the rows a reader of the whole run expects."""
    if any(dim not in ds.coords for ds in shards):
        return
    expected = 0
    for path, ds in zip(paths, shards, strict=True):
        rows = ds[dim].values
        if len(rows) and (rows[0] != expected or (np.diff(rows) != 1).any()):
            raise DamagedStore(
                f"{path} is damaged: it holds rows {rows[0]}..{rows[-1]} where rows from "
                f"{expected} were expected; {rebuild_hint(path)}"
            )
        expected += len(rows)


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


def open_by_model(
    paths: Sequence[str | os.PathLike], models: Sequence[str], n_tokens: int | None = None
) -> dict[str, xr.Dataset]:
    """Stores of one kind per model (paths in the order of models), checked to be the model's
    and, when n_tokens is given, to hold as many tokens as the caption states."""
    if len(paths) != len(models):
        raise ValueError(f"{len(paths)} stores for {len(models)} models")
    out = {}
    for path, model in zip(paths, models, strict=True):
        ds = open_zarr(path)
        if ds.attrs.get("model", model) != model:
            raise ValueError(f"{path} holds model {ds.attrs['model']!r}, not {model!r}")
        held = ds.attrs.get("n_tokens")
        if n_tokens is not None and held is not None and int(held) != n_tokens:
            raise ValueError(
                f"{path} holds {held} tokens but the config measures {n_tokens}: rerun the "
                "workflow so the stores match the config"
            )
        out[model] = ds
    return out


def open_token_shards(
    paths: Sequence[str | os.PathLike],
    model: str,
    n_tokens: int | None = None,
    variables: Sequence[str] = (),
) -> xr.Dataset:
    """Per-token shards of one model and kind (lazily; only `variables` if given), checked like
    open_by_model."""
    ds = open_shards(list(paths), variables=variables)
    return _checked_tokens(ds, paths, model, n_tokens)


def _checked_tokens(
    ds: xr.Dataset, paths: Sequence[str | os.PathLike], model: str, n_tokens: int | None
) -> xr.Dataset:
    """ds, after checking that it holds `model` and n_tokens tokens."""
    if ds.attrs.get("model", model) != model:
        raise ValueError(f"{paths[0]} holds model {ds.attrs['model']!r}, not {model!r}")
    held = ds.sizes["batch"] * ds.sizes["pos"]
    if n_tokens is not None and held != n_tokens:
        raise ValueError(
            f"the shards of {model} hold {held} tokens but the config measures {n_tokens}: "
            "rerun the workflow so the stores match the config"
        )
    return ds


def open_head_shards(
    paths: Sequence[str | os.PathLike],
    model: str,
    n_tokens: int | None = None,
    variables: Sequence[str] = (),
    heads: Sequence[Sequence[int]] = (),
) -> xr.Dataset:
    """The ablation shards' per-token head `variables` (dims layer, head, batch, pos), lazily,
    from shards of either layout (analysis.shards.as_per_token), checked like
    open_token_shards; fails in one line when a `top` shard did not keep every token of one of
    `heads`, the heads the reader will read."""
    from selfrepair.analysis.shards import as_per_token, not_kept, shard_attrs

    stores = open_shard_list(list(paths))
    if missing := not_kept(stores, heads):
        raise ValueError(
            f"{paths[0]} and its shards keep every token only of the heads of Figs 3-5 and "
            f"16-18 (engine.store_tokens: top), not of {missing}: set engine.store_tokens: all, "
            "or name these heads in those figures' config"
        )
    ds = xr.concat([as_per_token(s, variables) for s in stores], "batch", combine_attrs="drop")
    ds.attrs = shard_attrs(stores[0])
    return _checked_tokens(ds, paths, model, n_tokens)
