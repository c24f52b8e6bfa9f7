"""A workflow killed (SIGKILL, the whole process group) in the middle of the ablation stage
resumes: the rerun keeps every shard finished before the kill, and its numbers equal those of
an uninterrupted run bit for bit; so does every file of results/ (stores, metrics), byte for
byte, but the logs and benchmarks (they record times).

Slow: three runs of a toy configuration (.test/config/resume.yaml: one small trained model, four
token shards, two ablations, up to the per-head summaries).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import yaml
from helpers import TEST_CONFIG, result_files

from selfrepair.stages.store import open_zarr

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow
TIMEOUT = 900
JOBS = 2  # --cores: one-thread jobs run side by side
MODEL = "tiny-pythia"
# The toy run, given after config.yaml and demo.yaml (committed beside the reduced demo).
TOY_CONFIG = TEST_CONFIG / "resume.yaml"
TOY = yaml.safe_load(TOY_CONFIG.read_text())
TARGETS = [f"results/{MODEL}/summary/{a}.zarr" for a in TOY["ablations"]]


def command(workdir: Path, *args: str) -> list[str]:
    configs = [ROOT / "config" / "config.yaml", ROOT / "config" / "demo.yaml", TOY_CONFIG]
    return [
        sys.executable, "-m", "snakemake",
        "--snakefile", str(ROOT / "workflow" / "Snakefile"),
        "--configfile", *map(str, configs),
        "--cores", str(JOBS),
        *args,
    ]  # fmt: skip


def run(workdir: Path, *args: str) -> str:
    proc = subprocess.run(
        command(workdir, *args), cwd=workdir, capture_output=True, text=True, timeout=TIMEOUT
    )
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, "\n".join(out.splitlines()[-40:])
    return out


def workdir_for(tmp_path_factory, name: str) -> Path:
    return tmp_path_factory.mktemp(name)


def shards(workdir: Path) -> list[Path]:
    return sorted((workdir / "results" / MODEL / "ablation").glob("*/shard-*.zarr"))


def n_ablation_shards() -> int:
    assert TOY["data"]["n_tokens"] // (TOY["data"]["seq_len"] - 1) == 4 * TOY["data"]["shard_rows"]
    return len(TOY["ablations"]) * 4


def kill_during_ablation(workdir: Path) -> dict[str, int]:
    """Start the run; SIGKILL its process group once some but not all ablation shards exist.
    The inode of each shard store that existed at the kill."""
    proc = subprocess.Popen(
        command(workdir, *TARGETS),
        cwd=workdir,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    deadline = time.monotonic() + TIMEOUT
    try:
        while time.monotonic() < deadline and proc.poll() is None:
            done = shards(workdir)
            if JOBS + 1 <= len(done) < n_ablation_shards():
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
                return {str(p.relative_to(workdir)): p.stat().st_ino for p in shards(workdir)}
            time.sleep(0.1)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    pytest.fail(f"the run ended or timed out before the ablation stage (exit {proc.returncode})")


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    whole = workdir_for(tmp_path_factory, "uninterrupted")
    run(whole, *TARGETS)
    killed = workdir_for(tmp_path_factory, "killed")
    before = kill_during_ablation(killed)
    # What a user does after a crash: release the lock, then run the same command again.
    run(killed, "--unlock")
    log = run(killed, "--rerun-incomplete", *TARGETS)
    return whole, killed, before, log


def test_killed_run_left_only_complete_shards(runs):
    _, killed, before, _ = runs
    assert JOBS + 1 <= len(before) < n_ablation_shards()
    for rel in before:  # every store present at the kill was whole (atomic rename)
        open_zarr(killed / rel).load()


def test_resumed_run_reused_finished_shards_and_left_no_temporary_stores(runs):
    _, killed, before, log = runs
    now = {str(p.relative_to(killed)): p.stat().st_ino for p in shards(killed)}
    assert len(now) == n_ablation_shards()
    # A shard renamed into place by a job that Snakemake had not yet seen finish may be redone
    # (--rerun-incomplete): at most one per job running at the kill. Every other one is kept.
    kept = [rel for rel, inode in before.items() if now[rel] == inode]
    assert len(kept) >= len(before) - JOBS, (before, now)
    assert "rule train_model:" not in log and "rule tokenize:" not in log  # upstream kept
    leftovers = [p for p in (killed / "results").rglob("*") if ".tmp-" in p.name]
    assert not leftovers, leftovers


def test_resumed_numbers_equal_an_uninterrupted_run(runs):
    whole, killed, _, _ = runs
    paths = [p.relative_to(whole) for p in shards(whole)]
    assert len(paths) == n_ablation_shards()
    for rel in paths + [Path(t) for t in TARGETS]:
        a, b = open_zarr(whole / rel).load(), open_zarr(killed / rel).load()
        assert set(a.data_vars) == set(b.data_vars), rel
        for name in a.data_vars:
            assert np.array_equal(a[name].values, b[name].values, equal_nan=True), (rel, name)
        assert a.attrs["model_revision"] == b.attrs["model_revision"], rel
        assert "seconds" not in a.attrs, rel


def test_resumed_run_is_byte_identical_to_an_uninterrupted_one(runs):
    whole, killed, _, _ = runs
    a, b = result_files(whole), result_files(killed)
    assert any(".zarr/" in f for f in a) and any(f.endswith("training.json") for f in a)
    assert sorted(a) == sorted(b)
    assert [f for f in a if a[f] != b[f]] == []
