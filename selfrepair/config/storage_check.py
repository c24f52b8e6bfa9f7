"""The on-disk estimate (selfrepair.config.storage) printed as a table before the first job
and the one-line refusal when the disk lacks it: the Snakefile's onstart (check_storage)."""

from __future__ import annotations

import shutil
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from selfrepair.config import disk
from selfrepair.config.errors import ConfigError
from selfrepair.config.storage import NO_MODEL, PARTS, STAGES, estimate_storage

__all__ = ["check_storage", "describe_parts", "human", "known_total", "part_totals"]
__all__ += ["shown_total", "storage_table"]


def human(n: int) -> str:
    """Bytes in binary units: 512 B, 3.4 KB, 12.0 MB, 1.2 GB, 3.0 TB."""
    for unit, factor in (("PB", 2**50), ("TB", 2**40), ("GB", 2**30), ("MB", 2**20), ("KB", 2**10)):
        if n >= factor:
            return f"{n / factor:,.1f} {unit}"
    return f"{n} B"


def known_total(sizes: Iterable[int | None]) -> tuple[int, str]:
    """(the sum of the known sizes, "at least " when some are unknown, else "")."""
    sizes = list(sizes)
    return sum(s for s in sizes if s is not None), "at least " * (None in sizes)


def part_totals(estimate: dict[tuple[str, str, str], int | None]) -> dict[str, int | None]:
    """{part: bytes} of PARTS over the estimate (None: some job's size unknown)."""
    out: dict[str, int | None] = {}
    for (_, _, part), size in estimate.items():
        before = out.get(part, 0)
        out[part] = None if before is None or size is None else before + size
    return out


def describe_parts(estimate: dict[tuple[str, str, str], int | None]) -> str:
    """The parts, e.g. results/ 25.1 MB, resources/ 3.9 MB, logs 2.2 MB ("at least" if unknown)."""
    names = {"results": "results/", "resources": "resources/", "logs": "logs"}
    sizes: dict[str, list[int | None]] = {}
    for (_, _, part), size in estimate.items():
        sizes.setdefault(part, []).append(size)
    totals = {part: known_total(sizes[part]) for part in PARTS if part in sizes}
    return ", ".join(f"{names[p]} {shown_total(n, bound)}" for p, (n, bound) in totals.items())


def shown_total(size: int, bound: str) -> str:
    """A total as the table prints it: "unknown" when no part of it is known (not "at least
    0 B"), else its lower bound or size, e.g. "at least 3.0 GB", "25.1 MB"."""
    return "unknown" if bound and not size else bound + human(size)


def storage_table(
    estimate: dict[tuple[str, str, str], int | None], store_tokens: str = "all", block: int = 4096
) -> str:
    """The estimate as a short table: a line per (model, stage) writing something (its parts
    together), in the DAG's order, a line per model and the total by part."""
    total, bound = known_total(estimate.values())
    amount = "about " + human(total) if not bound else shown_total(total, bound)
    amount = "an unknown amount" if amount == "unknown" else amount
    lines = [
        f"The planned jobs take {amount} on disk in {block}-byte blocks "
        f"({describe_parts(estimate)}; an upper bound, engine.store_tokens: {store_tokens}):"
    ]
    rows: dict[tuple[str, str], list[int | None]] = {}
    for (model, stage, _), size in estimate.items():
        rows.setdefault((model, stage), []).append(size)
    width = max([len(m) for m, _ in rows] + [8])
    order = {stage: i for i, stage in enumerate(STAGES)}
    models = sorted(dict.fromkeys(m for m, _ in rows), key=lambda m: m == NO_MODEL)
    for model in models:
        mine = {s: known_total(b) for (m, s), b in rows.items() if m == model and any(b)}
        mine |= {s: (0, "unknown") for (m, s), b in rows.items() if m == model and None in b}
        for stage in sorted(mine, key=lambda s: order.get(s, len(order))):
            size, unknown = mine[stage]
            shown = shown_total(size, unknown)
            lines.append(f"  {model:<{width}}  {stage:<12} {shown:>17}")
        if len(mine) > 1:
            part, part_bound = known_total(sum((rows[model, s] for s in mine), []))
            lines.append(f"  {model:<{width}}  {'(model)':<12} {shown_total(part, part_bound):>17}")
    lines.append(f"  {'total':<{width}}  {'':<12} {shown_total(total, bound):>17}")
    return "\n".join(lines)


def check_storage(
    config: dict, models: dict, jobs: Iterable[Any], results: str | Path = "results", out=None
) -> dict[tuple[str, str, str], int | None]:
    """Print the estimate's table (to `out`, default stderr), then refuse in one line when the
    disk holding results/ (its nearest existing folder, relative to the working directory) has
    less free space than the known total: the Snakefile's onstart. Arguments: estimate_storage's.
    """
    folder = Path(results).absolute()
    while not folder.exists() and folder != folder.parent:  # where results/ will be made
        folder = folder.parent
    block = disk.block_size(folder)
    estimate = estimate_storage(config, models, jobs, block)
    store_tokens = config["engine"].get("store_tokens", "top")
    print(storage_table(estimate, store_tokens, block), file=out or sys.stderr)
    total, bound = known_total(estimate.values())
    free = shutil.disk_usage(folder).free
    if total > free:
        fix = "set engine.store_tokens: top, " if store_tokens == "all" else ""
        raise ConfigError(
            f"config key engine.store_tokens: the planned jobs take {bound}{human(total)} "
            f"({total:,} bytes) on disk in {block}-byte blocks ({describe_parts(estimate)}) "
            f"but {folder} has {human(free)} ({free:,} bytes) free; {fix}free space, fewer "
            "data.n_tokens, or run in a folder on a larger disk (snakemake --directory)"
        )
    return estimate
