"""Shared by the tests: config files as they read them, the workflow's figures and tables, the
committed test configs, and the files of a run's results/ that two runs of one config must write
byte for byte."""

from __future__ import annotations

import copy
import hashlib
import subprocess
import sys
from pathlib import Path

import yaml

from selfrepair.config.figures import TABLES as TABLE_FILES
from selfrepair.config.figures import figure_names

ROOT = Path(__file__).resolve().parents[1]
SCHEMA = str(ROOT / "workflow" / "schemas" / "config.schema.yaml")

# The figures of the workflow (the file name stems of results/figures/*.png) in a run with a
# frozen-LayerNorm variant, as the demo, the reduced demo and the paper's config have: the one
# figure list the rules read (selfrepair.config.figures).
FIGURES = figure_names(frozen_ln=True)
TABLES = set(TABLE_FILES)
# The committed test configs (.test/config/), as the snakemake-workflows repositories keep them.
TEST_CONFIG = ROOT / ".test" / "config"
REDUCED_DEMO = TEST_CONFIG / "config.yaml"


def snakemake(*args: str, cwd: Path, timeout: int) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "snakemake", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def load(name: str) -> dict:
    """config/<name>, parsed."""
    return yaml.safe_load((ROOT / "config" / name).read_text())


def merged(base: dict, extra: dict) -> dict:
    """Snakemake's --configfile merge: mappings key by key, everything else replaced."""
    out = copy.deepcopy(base)
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merged(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


# Snakemake's logs (timestamps, progress bars) and benchmark files (wall times). Everything else
# in results/ must be the same bytes in two runs of the same config.
TIMED = ("logs", "benchmarks")


def result_files(workdir: Path) -> dict[str, str]:
    """{path under results/: sha256 of its bytes} of every file but the timed ones."""
    root = workdir / "results"
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file() and p.relative_to(root).parts[0] not in TIMED
    }
