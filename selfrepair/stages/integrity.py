"""What the files of a store written by stages.store.write_zarr must be, checked whenever it is
opened: every chunk file the one written at its place (its stored CRC32C against the store's
record), every metadata file the one written (equal to its copy in the consolidated .zmetadata,
which readers use, and to the SHA-256 the store recorded), and the store itself at the place it was
written (a store copied or renamed onto another's path passes every checksum, but not this).
Each check returns what is wrong in words, or None; stages.store turns it into DamagedStore."""

from __future__ import annotations

import hashlib
import itertools
import json
import math
import os
from collections.abc import Sequence
from pathlib import Path

from selfrepair.ablations import parse_variant, variant
from selfrepair.config.places import ABLATION_NAMES

__all__ = [
    "ARRAY_METADATA_FILES",
    "CHUNK_CHECKSUMS",
    "METADATA_DIGESTS",
    "METADATA_FILES",
    "PLACE",
    "chunk_file_problem",
    "metadata_problem",
    "place_problem",
    "canonical_digest",
    "chunk_record",
    "first_line",
    "identity_problem",
    "metadata_record",
    "read_consolidated",
    "run_place",
    "store_place",
    "store_problem",
]

# Each chunk's stored checksum (its last 4 bytes), recorded per array and chunk key in the
# store's attributes: a chunk file replaced by another valid one (of another array, chunk or
# store) passes its own checksum, but not this record of what was written at its place.
CHUNK_CHECKSUMS = "selfrepair_chunk_crc32c"
# SHA-256 of every metadata file (canonical JSON; the root attributes without this record), so
# that an edited .zarray or .zattrs is refused even where the consolidated .zmetadata, which
# readers use, was rebuilt to match it.
METADATA_DIGESTS = "selfrepair_metadata_sha256"
# Where the store was written: its path below the run's own `results` folder (else its own
# name). A store copied over another (shard-001 onto shard-000, one model's onto another's)
# passes every checksum, but not this. The run's folder is the first `results` of the path as
# the workflow gives it (relative to its working directory), never a later one: a folder of that
# name deeper down (a task named `results`) would give two models' stores the same place.
PLACE = "selfrepair_place"
PLACE_ANCHOR = "results"
# Beside the metadata, the only file a store may hold outside its arrays: the empty marker
# Snakemake puts into each directory() output it has made.
METADATA_FILES = {".zattrs", ".zgroup", ".zmetadata", ".snakemake_timestamp"}
ARRAY_METADATA_FILES = {".zarray", ".zattrs"}


def read_consolidated(path: Path) -> dict[str, dict] | None:
    """The "metadata" mapping of a store's .zmetadata, or None when it cannot be read."""
    try:
        consolidated = json.loads((path / ".zmetadata").read_text())["metadata"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    ok = isinstance(consolidated, dict) and all(isinstance(v, dict) for v in consolidated.values())
    return consolidated if ok else None


def store_problem(
    path: str | os.PathLike, consolidated: dict[str, dict] | None = None
) -> str | None:
    """What is wrong with the files of a store written by write_zarr (None when nothing is): its
    metadata (metadata_problem), its place (place_problem), what it holds against what its path
    names (identity_problem), then its chunk files (chunk_file_problem).

    Args:
        path: the store.
        consolidated: its .zmetadata's "metadata" mapping, if already read.
    """
    path = Path(path)
    consolidated = consolidated or read_consolidated(path)
    if consolidated is None:
        return "its consolidated metadata .zmetadata is missing or cannot be read"
    if problem := metadata_problem(path, consolidated):
        return problem
    attrs = consolidated.get(".zattrs", {})
    return (
        place_problem(path, attrs.get(PLACE))
        or identity_problem(path, attrs)
        or chunk_file_problem(path, attrs.get(CHUNK_CHECKSUMS))
    )


def first_line(err: BaseException) -> str:
    """An exception's first line (its type's name when it has no text)."""
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


def _canonical(meta: object) -> bytes:
    return json.dumps(meta, sort_keys=True, separators=(",", ":")).encode()


def canonical_digest(meta: object) -> str:
    """SHA-256 (hex) of a JSON value's canonical text (sorted keys, no spaces)."""
    return hashlib.sha256(_canonical(meta)).hexdigest()


def _metadata_files(path: Path) -> dict[str, Path]:
    """Each metadata file of a store by its .zmetadata key (.zgroup, x/.zarray, ...)."""
    files = {name: path / name for name in (".zgroup", ".zattrs") if (path / name).is_file()}
    for array in _arrays(path):
        for name in sorted(ARRAY_METADATA_FILES):
            if (path / array / name).is_file():
                files[f"{array}/{name}"] = path / array / name
    return files


def _digest(key: str, meta: dict) -> str:
    if key == ".zattrs":  # the record is part of the root attributes: hashed without itself
        meta = {k: v for k, v in meta.items() if k != METADATA_DIGESTS}
    return canonical_digest(meta)


def metadata_record(path: Path) -> dict[str, str]:
    """{.zmetadata key: SHA-256 of the file's canonical JSON} of every metadata file."""
    return {
        key: _digest(key, json.loads(file.read_text()))
        for key, file in _metadata_files(path).items()
    }


def metadata_problem(path: str | os.PathLike, consolidated: dict[str, dict]) -> str | None:
    """What is wrong with a store's metadata files (None when nothing is): each must hold what the
    consolidated .zmetadata holds for it, which readers use, and both what the store's record
    (its root attributes' METADATA_DIGESTS) says was written.

    Args:
        path: the store.
        consolidated: its .zmetadata's "metadata" mapping.
    """
    path = Path(path)
    files = _metadata_files(path)
    if set(files) != set(consolidated):
        odd = sorted(set(files) ^ set(consolidated))
        return f"its metadata files and .zmetadata disagree on which exist ({', '.join(odd[:3])})"
    found = {}
    for key, file in files.items():
        try:
            found[key] = json.loads(file.read_text())
        except (OSError, ValueError) as err:
            return f"its metadata file {key} cannot be read ({first_line(err)})"
        if _canonical(found[key]) != _canonical(consolidated[key]):
            return f"its metadata file {key} differs from its copy in .zmetadata"
    record = (found.get(".zattrs") or {}).get(METADATA_DIGESTS)
    if not isinstance(record, dict) or set(record) != set(found):
        return "its record of the metadata files written is missing or incomplete"
    for key, meta in found.items():
        if record[key] != _digest(key, meta):
            return f"its metadata file {key} is not the one written (its digest differs)"
    return None


def run_place(path: str | os.PathLike) -> tuple[str, ...] | None:
    """A path's parts below the run's own `results` folder, or None when it lies in none: the
    first `results` of the path relative to the working directory (where the workflow runs),
    else, for a path outside it, the first of the absolute path's."""
    absolute = Path(os.path.normpath(Path(path).absolute()))
    try:
        parts = absolute.relative_to(Path.cwd()).parts
    except ValueError:
        parts = absolute.parts
    if PLACE_ANCHOR not in parts[:-1]:
        return None
    return parts[parts.index(PLACE_ANCHOR) + 1 :]


def store_place(path: str | os.PathLike) -> str:
    """Where a store is, as write_zarr records it: its path below the run's own `results`
    folder (run_place; e.g. tiny-gpt2/ablation/resample/shard-000.zarr), else its own name."""
    return "/".join(run_place(path) or Path(os.path.normpath(path)).parts[-1:])


def place_problem(path: str | os.PathLike, recorded: object) -> str | None:
    """Why a store at `path` is not the one written there (None when it is): the place it
    recorded (store_place) must be the end of its path. A store renamed as a whole (results/
    moved elsewhere) keeps its place; one copied or renamed onto another's path does not."""
    if not isinstance(recorded, str) or not recorded:
        return "it records no place it was written to"
    parts = Path(os.path.normpath(Path(path).absolute())).parts
    place = tuple(recorded.split("/"))
    if parts[-len(place) :] != place:
        return (
            f"it was written as {recorded} (a store copied or renamed onto this path), not "
            f"as {store_place(path)}"
        )
    return None


def identity_problem(path: str | os.PathLike, attrs: dict) -> str | None:
    """Why a store at `path` does not hold what its path names (None when it does): the model
    (results/<model>/...), task (results/<model>/tasks/<task>/...) and, where the path names
    one, ablation (a folder or the file's name: ablation/<a>/, summary/<a>.zarr,
    attribution/detail-<a>.zarr) its provenance attributes record. Read from the longer of the path below the run's results folder and the
    recorded place (a suffix of the path once place_problem passed), so that a moved results
    folder is still read. Checked only on stores that record a model (the workflow's)."""
    recorded = attrs.get(PLACE)
    parts = max(
        run_place(path) or (),
        tuple(recorded.split("/")) if isinstance(recorded, str) else (),
        key=len,
    )
    if "model" not in attrs or len(parts) < 2:
        return None
    task = parts[2] if len(parts) > 3 and parts[1] == "tasks" else None
    named = {"model": parts[0], "task": task}
    for key, want in named.items():
        held = attrs.get(key)
        if held != want:
            where = f"{key} {want}" if want else f"no {key}"
            return f"it holds {key} {held}, but its path names {where} (a store copied here)"
    ablation = attrs.get("ablation")
    if isinstance(ablation, str):
        kind, frozen = parse_variant(ablation)
        held = variant(kind, frozen or bool(attrs.get("freeze_ln")))
        stem = parts[-1].removesuffix(".zarr")
        words = {*parts[1:-1], stem, stem.split("-", 1)[-1]}  # sums-mean, detail-<a>
        if (named := words & ABLATION_NAMES) and held not in named:
            return f"it holds ablation {held}, but its path names {', '.join(sorted(named))}"
    return None


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


def chunk_record(path: Path) -> dict[str, dict[str, int]]:
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
