"""Shared by the tests: config files as they read them, the workflow's figures and tables, the
committed test configs, and the files of a run's results/ that two runs of one config must write
byte for byte."""

from __future__ import annotations

import hashlib
import re
import subprocess
import sys
from functools import cache
from pathlib import Path

import yaml

from selfrepair.config import merged_config as merged
from selfrepair.config.figures import run_figures

ROOT = Path(__file__).resolve().parents[1]
SCHEMA = str(ROOT / "workflow" / "schemas" / "config.schema.yaml")
RULES = ROOT / "workflow" / "rules"
_RULE = re.compile(r"^\s*(?:rule (\w+)|use rule \w+ as (\w+) with):", re.MULTILINE)


def rule_texts_of(smk: str) -> dict[str, str]:
    """Each rule's text in workflow/rules/<smk>, by rule name (`use rule ... as X with:` too)."""
    text = (RULES / smk).read_text()
    starts = [(m.group(1) or m.group(2), m.start()) for m in _RULE.finditer(text)]
    ends = [start for _, start in starts[1:]] + [len(text)] * bool(starts)
    return {name: text[start:end] for (name, start), end in zip(starts, ends, strict=True)}


def rule_texts() -> dict[str, str]:
    """Each rule's text in every rules file (workflow/rules/*.smk), by rule name."""
    return {k: v for smk in sorted(RULES.glob("*.smk")) for k, v in rule_texts_of(smk.name).items()}


def rule_files(folder: str) -> dict[str, list[str]]:
    """The output paths under results/<folder>/ that each rule writes literally."""
    found = {
        name: re.findall(rf'"(results/{folder}/[^"]+)"', text)
        for name, text in rule_texts().items()
    }
    return {name: paths for name, paths in found.items() if paths}


def base_rule(rule: str) -> str:
    """The rule a `use rule X as <rule> with:` is made from (X), or the rule itself."""
    base = re.search(rf"use rule (\w+) as {rule} with:", rule_texts()[rule])
    return rule if base is None else base.group(1)


def own_script(rule: str) -> bool:
    """Whether the rule's text names a script (a `use rule` variant may run its base's)."""
    return re.search(r'"\.\./scripts/([^"]+)"', rule_texts()[rule]) is not None


def rule_script(rule: str) -> str:
    """The file name of a rule's script (workflow/scripts/<name>), as its rule text names it
    (a rule made `use rule ... with:` runs its base rule's)."""
    texts = rule_texts()
    match = re.search(r'"\.\./scripts/([^"]+)"', texts[rule])
    if match is None:
        base = re.search(rf"use rule (\w+) as {rule} with:", texts[rule])
        return rule_script(base.group(1))
    return match.group(1)


def figure_names(frozen_ln: bool = True, attribution: bool = True, training: bool = True):
    """The file stems of the figures (results/figures/<stem>.png) of a run: the rules of the one
    figure list (selfrepair.config.figures) that the run makes, their files as the rules write
    them."""
    files = rule_files("figures")
    figures = run_figures(frozen_ln, attribution=attribution, training=training)
    return {Path(p).stem for f in figures for p in files[f.rule] if p.endswith(".png")}


# The figures of the workflow in a run with a frozen-LayerNorm variant, as the demo, the reduced
# demo and the paper's config have, and the tables of every run.
FIGURES = figure_names(frozen_ln=True)
TABLES = {Path(p).name for p in rule_files("tables")["head_table"]}
# The committed test configs (.test/config/), as the snakemake-workflows repositories keep them.
TEST_CONFIG = ROOT / ".test" / "config"
# The reduced demo: an overlay of config/demo.yaml listing only what it reduces, so it is run as
# `--configfile config/demo.yaml .test/config/config.yaml` (the config files below, in order).
REDUCED_DEMO = TEST_CONFIG / "config.yaml"
REDUCED_DEMO_CONFIGS = ("config/demo.yaml", ".test/config/config.yaml")
# The offline paper run with Llama-7B (tests/test_paper_offline.py), in this order: paper-ci.yaml
# shrinks config.yaml's sizes; paper-llama.yaml then replaces the model list and Fig 8's panels
# (both lists, so they replace paper-ci.yaml's); paper-llama-ci.yaml last replaces the model list
# again with paper-ci.yaml's two models and Llama-7B on the stand-in. Another order measures the
# paper's models at full size or without Llama-7B.
PAPER_LLAMA_CI = (
    ".test/config/paper-ci.yaml",
    "config/paper-llama.yaml",
    ".test/config/paper-llama-ci.yaml",
)


def link_project(run: Path, *, test_configs: bool = True) -> Path:
    """Make run a place to run the workflow from: links to the project's workflow, config and
    package (and .test, the committed test configs). Returns run."""
    for name in ("workflow", "config", "selfrepair", *([".test"] if test_configs else [])):
        (run / name).symlink_to(ROOT / name)
    return run


def snakemake(*args: str, cwd: Path, timeout: int) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "snakemake", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


@cache
def dry_run(*configs: str) -> str:
    """The output of `snakemake -n --forceall` with these config files, from the repository."""
    proc = subprocess.run(
        [sys.executable, "-m", "snakemake", "-n", "--forceall", "--cores", "2", "--configfile",
         *configs],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    return proc.stdout


def load(name: str) -> dict:
    """config/<name>, parsed."""
    return yaml.safe_load((ROOT / "config" / name).read_text())


def load_file(path: str) -> dict:
    """A config file by its path from the repository root, parsed."""
    return yaml.safe_load((ROOT / path).read_text())


def load_test(name: str) -> dict:
    """.test/config/<name>, parsed."""
    return yaml.safe_load((TEST_CONFIG / name).read_text())


def reduced_demo_config() -> dict:
    """The reduced demo's config as its files merge: config/demo.yaml, then the overlay (without
    config/config.yaml, which Snakemake merges under both)."""
    return merged(load("demo.yaml"), load_test("config.yaml"))


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
