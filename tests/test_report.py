"""The demo run builds the full Snakemake report: every figure, with its caption, and the table.

Slow: by default it runs a reduced demo (the whole DAG of config/demo.yaml with fewer tokens
and training steps) in a temporary directory, then `snakemake --report`. Point
SELFREPAIR_DEMO_RUN at the directory of a finished run of config/demo.yaml (e.g. the checkout
after `snakemake --cores all --configfile config/demo.yaml`) to build the report from it
instead (SELFREPAIR_DEMO_CONFIG: its config file, if not config/demo.yaml).
"""

from __future__ import annotations

import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow

# The figures and tables of rules/figures.smk (the file name stems of results/figures/*.png).
FIGURES = {
    "fig01_self_repair_per_head",
    "fig02_de_vs_logit_drop",
    "fig03_tokens_de_vs_logit_drop",
    "fig05_tokens_by_ablation",
    "fig06_ln_share",
    "fig11_ln_share_unclipped",
    "fig21-24_de_vs_logit_drop_other_models",
    "extra_frozen_ln",
}
TABLES = {"head_summary.csv", "head_summary.html"}


def reduced_demo(demo: dict) -> dict:
    """config/demo.yaml at toy size: same models (4 layers x 4 heads, so the figure
    substitutes stay valid), ablations and figures; fewer tokens and training steps."""
    config = yaml.safe_load(yaml.safe_dump(demo))
    config["data"].update(n_tokens=2048, seq_len=32, shard_rows=32)  # 64 rows, 2 shards
    config["engine"].update(batch_size=32)
    config["figures"] = dict(config.get("figures", {}), bootstrap={"resamples": 200})
    for tok in config["tokenizers"].values():
        tok["vocab_size"] = 512
    for entry in config["models"]:
        entry["train"].update(d_model=32, steps=20, batch_size=8)
    return config


def snakemake(*args: str, cwd: Path, timeout: int) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "snakemake", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory) -> tuple[Path, str]:
    """(run directory, its config file) of a finished demo run."""
    given = os.environ.get("SELFREPAIR_DEMO_RUN")
    if given:
        return Path(given), os.environ.get("SELFREPAIR_DEMO_CONFIG", "config/demo.yaml")
    run = tmp_path_factory.mktemp("demo-run")
    for name in ("workflow", "config", "selfrepair"):
        (run / name).symlink_to(ROOT / name)
    config = reduced_demo(yaml.safe_load((ROOT / "config" / "demo.yaml").read_text()))
    (run / "reduced.yaml").write_text(yaml.safe_dump(config))
    proc = snakemake("--cores", "2", "--configfile", "reduced.yaml", cwd=run, timeout=3600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return run, "reduced.yaml"


def test_demo_run_builds_a_report_with_every_figure_and_the_table(finished_run):
    run, configfile = finished_run
    made = {p.stem for p in (run / "results" / "figures").glob("*.png")}
    assert made >= FIGURES
    for stem in made:
        for suffix in (".png", ".pdf"):
            assert (run / "results" / "figures" / f"{stem}{suffix}").stat().st_size > 1000

    report = run / "report.zip"
    # --cores: rules/data.smk sizes threads from workflow.cores, so the DAG needs it.
    proc = snakemake(
        "--cores", "1", "--configfile", configfile, "--report", str(report), cwd=run, timeout=600
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    with zipfile.ZipFile(report) as archive:
        names = archive.namelist()
        html = next(n for n in names if n.endswith("report.html"))
        page = archive.read(html).decode()
    listed = {Path(n).name for n in names}
    assert {f"{stem}.png" for stem in made} <= listed  # every figure made is in the report
    assert TABLES <= listed
    # Every figure has its caption, stating what was measured; the demo's substitutes say so.
    assert page.count("Measured.") >= len(FIGURES) + 2  # + the table's two files
    for paper in ("pythia-1b", "pythia-410m L22H11", "pythia-160m L11H10"):
        assert f"substitute for the paper's {paper}" in page
