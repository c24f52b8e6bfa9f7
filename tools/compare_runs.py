"""Compare two runs of the workflow file by file: are their results the same bits?

    python tools/compare_runs.py RUN_A RUN_B [--subdir results --subdir resources]

Every file under the two run folders (logs and benchmark timings aside, they hold times) is
compared byte for byte. Where a Zarr store differs, it says how: which arrays differ in shape,
dtype or values, and which attributes differ (the provenance keys that name versions or the run
aside, with --ignore-provenance). Exits 0 when everything compared is identical, 1 otherwise.
A refactor proves itself with this: the same demo before and after, every store bitwise equal.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

SKIPPED_DIRS = ("logs", "benchmarks", ".snakemake")
PROVENANCE_KEYS = ("versions",)


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


def compare_runs(a: Path, b: Path, subdirs: list[str], ignore: tuple[str, ...]) -> list[str]:
    """Every difference between two runs, one line each (empty: identical)."""
    problems: list[str] = []
    stores_done: set[str] = set()
    for sub in subdirs:
        fa, fb = run_files(a / sub), run_files(b / sub)
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
                diffs = store_differences(a / sub / store, b / sub / store, ignore)
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
    args = parser.parse_args(argv)
    subdirs = args.subdir or ["results"]
    ignore = PROVENANCE_KEYS if args.ignore_provenance else ()
    problems = compare_runs(args.first, args.second, subdirs, ignore)
    n = sum(len(run_files(args.first / s)) for s in subdirs)
    for line in problems:
        print(line)
    print(
        f"{n} files compared under {', '.join(subdirs)}: "
        + ("identical" if not problems else f"{len(problems)} differences")
    )
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
