"""Zarr stores written atomically (temporary path, then rename) and read back as xarray, every
chunk carrying a CRC32C checksum that is verified whenever its values are loaded; and the
figure stages' openers that check a store holds the model and tokens the caption states."""

from __future__ import annotations

import functools
import itertools
import json
import math
import os
import shutil
from collections.abc import Sequence
from pathlib import Path

import dask.array
import numcodecs
import xarray as xr
import zarr

__all__ = [
    "CHUNK_CHECKSUMS",
    "DamagedStore",
    "chunk_file_problem",
    "open_by_model",
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
STORE_VERSION = 2  # 2: every chunk checksummed (CRC32C)
# Zarr v2 has one compressor per array: Blosc (Zarr's default) runs as the last filter and the
# CRC32C checksum of the compressed bytes is the "compressor", so any damaged byte of a chunk
# file fails the checksum before anything is decompressed.
COMPRESSION = numcodecs.Blosc(cname="lz4", clevel=5, shuffle=numcodecs.Blosc.SHUFFLE)
CHECKSUM = numcodecs.CRC32C()
# Each chunk's stored checksum (its last 4 bytes), recorded per array and chunk key in the
# store's attributes: a chunk file replaced by another valid one (of another array, chunk or
# store) passes its own checksum, but not this record of what was written at its place.
CHUNK_CHECKSUMS = "selfrepair_chunk_crc32c"
# Beside the metadata, the only file a store may hold outside its arrays: the empty marker
# Snakemake puts into each directory() output it has made.
METADATA_FILES = {".zattrs", ".zgroup", ".zmetadata", ".snakemake_timestamp"}
ARRAY_METADATA_FILES = {".zarray", ".zattrs"}


class DamagedStore(ValueError):
    """A store that is not what write_zarr wrote: one line naming the store, array and fix."""


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
    for var in ds.variables.values():  # what a read store carries must not override ours
        for key in ("filters", "compressor", "compressors", "chunks", "preferred_chunks"):
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
    group.attrs.update({CHUNK_CHECKSUMS: _stored_checksums(tmp)})
    zarr.consolidate_metadata(tmp, zarr_format=ZARR_FORMAT)
    if path.exists():
        shutil.rmtree(path)
    os.replace(tmp, path)


def open_zarr(path: str | os.PathLike, variables: Sequence[str] = ()) -> xr.Dataset:
    """Open a store written by write_zarr, lazily (dask), failing with a one-line DamagedStore
    naming the store, the array and the fix if it is missing, not a Zarr store, not written by
    this workflow, lacks one of `variables`, lacks a chunk file or holds a stray file; and,
    whenever values are loaded later, if a chunk fails its checksum or cannot be decoded."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path} does not exist: run the workflow stage that makes it")
    try:
        # No default indexes: they would load coordinates here, past the checks below.
        ds = xr.open_zarr(path, consolidated=True, chunks=None, create_default_indexes=False)
    except Exception as err:  # zarr raises several types for foreign or damaged stores
        raise DamagedStore(
            f"{path} is not a readable Zarr store ({type(err).__name__}: {_first_line(err)}); "
            f"{rebuild_hint(path)}"
        ) from err
    if ds.attrs.get(STORE_MARK) != STORE_VERSION:
        raise DamagedStore(
            f"{path} is a Zarr store this workflow did not write (or an older version of it "
            f"did); {rebuild_hint(path)}"
        )
    missing = [v for v in variables if v not in ds.variables]
    if missing:
        raise DamagedStore(f"{path} lacks variables {', '.join(missing)}; {rebuild_hint(path)}")
    attrs = dict(ds.attrs)
    damaged = chunk_file_problem(path, attrs.pop(CHUNK_CHECKSUMS, None))
    if damaged:
        raise DamagedStore(f"{path} is damaged: {damaged}; {rebuild_hint(path)}")
    checked = {name: _checked(var, path, name) for name, var in ds.variables.items()}
    # Building the Dataset makes the dimension indexes, loading those coordinates (checked).
    return xr.Dataset(
        {name: checked[name] for name in ds.data_vars},
        coords={name: checked[name] for name in ds.coords},
        attrs=attrs,
    )


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


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
            else f"cannot be decoded ({type(err).__name__}: {_first_line(err)})"
        )
        raise DamagedStore(
            f"{store} is damaged: a chunk of array {array} {what}; {rebuild_hint(store)}"
        ) from err


def _chunk_keys(shape: Sequence[int], chunks: Sequence[int], separator: str) -> set[str]:
    """The chunk file names a Zarr v2 array of this shape and chunking has (write_zarr writes
    every chunk, even all-fill ones)."""
    if not shape:
        return {"0"}
    grid = [range(math.ceil(n / c)) for n, c in zip(shape, chunks, strict=True)]
    return {separator.join(map(str, index)) for index in itertools.product(*grid)}


def _files_under(folder: Path) -> set[str]:
    return {
        str(Path(root, name).relative_to(folder))
        for root, _, files in os.walk(folder)
        for name in files
    }


def _arrays(path: Path) -> list[str]:
    return sorted(p.parent.name for p in path.glob("*/.zarray"))


def _trailing_checksum(chunk: Path) -> int:
    with open(chunk, "rb") as fh:
        fh.seek(max(chunk.stat().st_size - 4, 0))
        return int.from_bytes(fh.read(4), "little")


def _stored_checksums(path: Path) -> dict[str, dict[str, int]]:
    """{array: {chunk key: the CRC32C stored at the end of that chunk file}} of a store."""
    return {
        name: {
            key: _trailing_checksum(path / name / key)
            for key in sorted(_files_under(path / name) - ARRAY_METADATA_FILES)
        }
        for name in _arrays(path)
    }


def chunk_file_problem(
    path: str | os.PathLike, recorded: dict[str, dict[str, int]] | None
) -> str | None:
    """What is wrong with the files of a Zarr v2 store written by write_zarr: an array with
    chunk files missing or stray files beside them, a chunk file other than the one written at
    its place (its stored checksum differs from `recorded`, the store's record), or a stray file
    or folder in the store (None when every file is where its metadata says). A lost chunk would
    read as fill values and a stray one would hide it from a count, so names are compared."""
    path = Path(path)
    arrays = _arrays(path)
    stray = sorted(
        p.name for p in path.iterdir() if p.name not in METADATA_FILES and p.name not in arrays
    )
    if stray:
        return f"stray entries {', '.join(stray[:3])} in the store"
    for name in arrays:
        meta = json.loads((path / name / ".zarray").read_text())
        separator = meta.get("dimension_separator") or "."
        expected = _chunk_keys(meta["shape"], meta["chunks"], separator)
        if separator == "/":
            expected = {str(Path(key)) for key in expected}
        found = _files_under(path / name) - ARRAY_METADATA_FILES
        lost, extra = sorted(expected - found), sorted(found - expected)
        if lost:
            return (
                f"array {name} lacks chunk files {', '.join(lost[:3])} "
                f"({len(found & expected)} of its {len(expected)} present)"
            )
        if extra:
            return f"array {name} has stray files {', '.join(extra[:3])} beside its chunks"
        record = (recorded or {}).get(name, {})
        for key in sorted(expected):
            if record.get(key) != _trailing_checksum(path / name / key):
                return (
                    f"array {name} chunk {key} is not the file written there (its checksum "
                    "differs from the store's record)"
                )
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
    if ds.attrs.get("model", model) != model:
        raise ValueError(f"{paths[0]} holds model {ds.attrs['model']!r}, not {model!r}")
    held = ds.sizes["batch"] * ds.sizes["pos"]
    if n_tokens is not None and held != n_tokens:
        raise ValueError(
            f"the shards of {model} hold {held} tokens but the config measures {n_tokens}: "
            "rerun the workflow so the stores match the config"
        )
    return ds
