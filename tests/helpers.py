"""Shared by the tests: config files as they read them, the workflow's figures, and the files of a
run's results/ that two runs of one config must write byte for byte."""

from __future__ import annotations

import copy
import hashlib
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
SCHEMA = str(ROOT / "workflow" / "schemas" / "config.schema.yaml")

# The figures of the workflow (the file name stems of results/figures/*.png).
FIGURES = {
    "fig01_self_repair_per_head",
    "fig02_de_vs_logit_drop",
    "fig03_tokens_de_vs_logit_drop",
    "fig05_tokens_by_ablation",
    "fig06_ln_share",
    "fig11_ln_share_unclipped",
    "fig21-24_de_vs_logit_drop_other_models",
    "extra_frozen_ln",
    # rules/mechanisms.smk
    "fig04_ln_scale_ratio",
    "fig07_top_repairing_neuron",
    "fig08_neuron_repair_thresholds",
    "fig09_self_repression",
    "fig15_neuron_cumulative_share",
    "fig16-18_resid_norm_ratio",
    "fig19_self_repression_scales",
}


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
