"""Compare two runs of the workflow file by file: are their results the same bits?

    python tools/compare_runs.py RUN_A RUN_B [--subdir results --subdir resources]
        [--map OLD=NEW ...] [--dataset-moves]

Every file under the two run folders (logs and benchmark timings aside, they hold times) is
compared byte for byte. Where a Zarr store differs, it says how: which arrays differ in shape,
dtype or values, and which attributes differ (the provenance keys that name versions or the run
aside, with --ignore-provenance). Exits 0 when everything compared is identical, 1 otherwise.
A refactor proves itself with this: the same demo before and after, every store bitwise equal.

A refactor that moves files names the moves: `--map OLD=NEW` (repeatable) compares RUN_A's path
OLD as RUN_B's NEW, each a path below the compared folder whose `*` stands for one folder name
(the same in both, in order), OLD matching the start of a path: `--map
'*/tasks/*/clean.zarr=*/tasks/*/clean/shard-000.zarr'`. `--dataset-moves` adds DATASET_MOVES,
the task stores' moves to the running-text layout. A moved store records the place it was
written (selfrepair_place, and the digest of its metadata, selfrepair_metadata_sha256): those
two are not compared on a moved store, and the count of moved files is printed.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

SKIPPED_DIRS = ("logs", "benchmarks", ".snakemake")
PROVENANCE_KEYS = ("versions",)
# What a moved store records of its own path (stages.integrity, stages.store).
PLACE_KEYS = ("selfrepair_place", "selfrepair_metadata_sha256")
# The task stores moved to the running-text layout (one rule per stage for every dataset:
# results/<model>/tasks/<task>/ is a dataset of one shard, 000).
DATASET_MOVES = ("*/tasks/*/clean.zarr=*/tasks/*/clean/shard-000.zarr",)


def parse_move(move: str) -> tuple[list[str], list[str]]:
    """OLD=NEW as two lists of path parts; ValueError naming the fix if malformed."""
    old, sep, new = move.partition("=")
    if not sep or not old or not new or old.count("*") != new.count("*"):
        raise ValueError(f"--map {move}: write OLD=NEW, with as many * in NEW as in OLD")
    return old.strip("/").split("/"), new.strip("/").split("/")


def moved(rel: str, moves: list[tuple[list[str], list[str]]]) -> str:
    """The path `rel` has after the first move whose OLD matches its start (else rel)."""
    parts = rel.split("/")
    for old, new in moves:
        head = parts[: len(old)]
        if len(head) == len(old) and all(o in ("*", p) for o, p in zip(old, head, strict=True)):
            stars = iter(p for o, p in zip(old, head, strict=True) if o == "*")
            return "/".join([next(stars) if n == "*" else n for n in new] + parts[len(old) :])
    return rel


def run_files(root: Path) -> dict[str, Path]:
    """Relative path -> file, for every file under root but logs and benchmark timings."""
    out = {}
    for path in sorted(root.rglob("*")):
        rel = path.relative_to(root)
        if path.is_file() and not any(part in SKIPPED_DIRS for part in rel.parts):
            out[rel.as_posix()] = path
    return out


def store_of(rel: str) -> str | None:
    """The Zarr store a file belongs to (the path up to its `.zarr` folder), if any."""
    parts = rel.split("/")
    for i, part in enumerate(parts):
        if part.endswith(".zarr"):
            return "/".join(parts[: i + 1])
    return None


def store_differences(a: Path, b: Path, ignore: tuple[str, ...]) -> list[str]:
    """How two Zarr stores differ: attributes (minus `ignore`), array names, shapes, values."""
    import numpy as np
    import zarr

    ga, gb = zarr.open_group(str(a), mode="r"), zarr.open_group(str(b), mode="r")
    out = []
    attrs_a = {k: v for k, v in ga.attrs.asdict().items() if k not in ignore}
    attrs_b = {k: v for k, v in gb.attrs.asdict().items() if k not in ignore}
    for key in sorted(set(attrs_a) | set(attrs_b)):
        if json.dumps(attrs_a.get(key), sort_keys=True) != json.dumps(
            attrs_b.get(key), sort_keys=True
        ):
            out.append(f"attribute {key!r} differs")
    names_a, names_b = set(ga.array_keys()), set(gb.array_keys())
    out += [f"array {n!r} only in the first" for n in sorted(names_a - names_b)]
    out += [f"array {n!r} only in the second" for n in sorted(names_b - names_a)]
    for name in sorted(names_a & names_b):
        xa, xb = ga[name], gb[name]
        if xa.shape != xb.shape or xa.dtype != xb.dtype:
            out.append(f"array {name!r}: {xa.shape} {xa.dtype} vs {xb.shape} {xb.dtype}")
            continue
        va, vb = xa[...], xb[...]
        same = va.tobytes() == vb.tobytes() if va.dtype.kind != "O" else np.array_equal(va, vb)
        if not same:
            out.append(f"array {name!r}: values differ")
        if json.dumps(dict(xa.attrs), sort_keys=True) != json.dumps(dict(xb.attrs), sort_keys=True):
            out.append(f"array {name!r}: attributes differ")
    return out


def compare_runs(
    a: Path, b: Path, subdirs: list[str], ignore: tuple[str, ...], moves: tuple[str, ...] = ()
) -> list[str]:
    """Every difference between two runs, one line each (empty: identical); `moves`: OLD=NEW
    paths of the first run that the second has elsewhere."""
    problems: list[str] = []
    stores_done: set[str] = set()
    parsed = [parse_move(m) for m in moves]
    for sub in subdirs:
        fa = {moved(rel, parsed): path for rel, path in run_files(a / sub).items()}
        fb = run_files(b / sub)
        if not fa and not fb:
            problems.append(f"{sub}/: no files in either run")
        for rel in sorted(set(fa) | set(fb)):
            where = f"{sub}/{rel}"
            if rel not in fa or rel not in fb:
                problems.append(
                    f"{where}: only in the {'second' if rel not in fa else 'first'} run"
                )
                continue
            if fa[rel].read_bytes() == fb[rel].read_bytes():
                continue
            store = store_of(rel)
            if store is None:
                problems.append(f"{where}: bytes differ")
            elif store not in stores_done:
                stores_done.add(store)
                rest = rel[len(store) :]  # below the store: the same in both runs
                first = Path(str(fa[rel])[: len(str(fa[rel])) - len(rest)])
                place = PLACE_KEYS if first != a / sub / store else ()
                diffs = store_differences(first, b / sub / store, ignore + place)
                if place and not diffs:  # moved: only its recorded place differs
                    continue
                label = (
                    "bytes differ, same arrays and attributes" if not diffs else "; ".join(diffs)
                )
                problems.append(f"{sub}/{store}: {label}")
    return problems


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("first", type=Path)
    parser.add_argument("second", type=Path)
    parser.add_argument("--subdir", action="append", help="folders to compare (default: results)")
    parser.add_argument(
        "--ignore-provenance", action="store_true", help=f"ignore attributes {PROVENANCE_KEYS}"
    )
    parser.add_argument(
        "--map", action="append", default=[], metavar="OLD=NEW", help="a path that moved"
    )
    parser.add_argument(
        "--dataset-moves", action="store_true", help=f"--map each of {DATASET_MOVES}"
    )
    args = parser.parse_args(argv)
    subdirs = args.subdir or ["results"]
    ignore = PROVENANCE_KEYS if args.ignore_provenance else ()
    moves = tuple(args.map) + (DATASET_MOVES if args.dataset_moves else ())
    try:
        problems = compare_runs(args.first, args.second, subdirs, ignore, moves)
    except ValueError as err:
        parser.error(str(err))
    n = sum(len(run_files(args.first / s)) for s in subdirs)
    parsed = [parse_move(m) for m in moves]
    n_moved = sum(moved(rel, parsed) != rel for s in subdirs for rel in run_files(args.first / s))
    for line in problems:
        print(line)
    if moves:
        print(
            f"{n_moved} files of the first run compared at their moved paths ({', '.join(PLACE_KEYS)} not compared on a moved store)"
        )
    print(
        f"{n} files compared under {', '.join(subdirs)}: "
        + ("identical" if not problems else f"{len(problems)} differences")
    )
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
