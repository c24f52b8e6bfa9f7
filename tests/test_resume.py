"""A workflow killed (SIGKILL, the whole process group) in the middle of the ablation stage
resumes: the rerun keeps every store of the ablate jobs finished before the kill (one job per
token shard writes every ablation variant's) and makes the killed job's again, and its numbers
equal those of an uninterrupted run bit for bit; so does every file of results/ (stores,
metrics), byte for byte, but the logs and benchmarks (they record times).

Slow, but it starts no run of its own: the uninterrupted run is the shared reduced demo
(`finished_run`, tests/conftest.py). A copy of it loses one model's ablation shards (four
variants x two token shards) and their per-head summaries; the run that makes them again, one
job at a time, is killed once one shard's job has finished and the other's has started, then
resumed as a user would.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from helpers import ROOT, link_project, result_files

from selfrepair.stages.store import open_zarr

pytestmark = pytest.mark.slow
TIMEOUT = 900
JOBS = 1  # --cores: one job at a time, so the first shard's job is done when the next starts
MODEL = "tiny-pythia"
# The demo's ablations, summarized by the targets; the frozen-LayerNorm variant is written by
# the same ablate jobs: 4 x 2 token shards.
ABLATIONS = ("mean", "resample", "zero")
VARIANTS = (*ABLATIONS, "resample-frozen-ln")


def command(configs: tuple[str, ...], *args: str) -> list[str]:
    return [
        sys.executable, "-m", "snakemake",
        "--snakefile", str(ROOT / "workflow" / "Snakefile"),
        "--configfile", *configs,
        "--cores", str(JOBS),
        *args,
    ]  # fmt: skip


def run(workdir: Path, configs: tuple[str, ...], *args: str) -> str:
    proc = subprocess.run(
        command(configs, *args), cwd=workdir, capture_output=True, text=True, timeout=TIMEOUT
    )
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, "\n".join(out.splitlines()[-40:])
    return out


def shards(workdir: Path) -> list[Path]:
    folder = workdir / "results" / MODEL / "ablation"
    return sorted(p for a in VARIANTS for p in (folder / a).glob("shard-*.zarr"))


def by_shard(stores) -> dict[str, list[str]]:
    """Store paths (relative, or Paths) by their token shard's file name."""
    out: dict[str, list[str]] = {}
    for store in stores:
        out.setdefault(Path(store).name, []).append(str(store))
    return out


def targets(whole: Path) -> list[str]:
    """MODEL's per-head summaries of ABLATIONS."""
    return [f"results/{MODEL}/summary/{a}.zarr" for a in ABLATIONS]


def drop_ablation_stage(workdir: Path, whole: Path) -> None:
    """Remove MODEL's ablation shards (and the attribution shards the same jobs write) and its
    per-head summaries from the copy: what the killed run has to make."""
    for shard in shards(whole):
        rel = shard.relative_to(whole)
        shutil.rmtree(workdir / rel)
        attribution = workdir / "results" / MODEL / "attribution" / rel.parent.name / rel.name
        if attribution.exists():
            shutil.rmtree(attribution)
    for target in targets(whole):
        shutil.rmtree(workdir / target)
    for log in (workdir / "results" / "logs" / "ablate" / MODEL).glob("shard-*.log"):
        log.unlink()  # the killed run's own tell which jobs started


def kill_during_ablation(workdir: Path, configs, wanted: list[str], n_shards: int):
    """Start the run; SIGKILL its process group once one token shard's ablate job has written
    every variant's store and the other shard's job has started (its log exists; Snakemake
    starts it only after it has seen the first finish) but not finished. The inode of each
    shard store that existed at the kill."""
    logs = workdir / "results" / "logs" / "ablate" / MODEL
    proc = subprocess.Popen(
        command(configs, *wanted),
        cwd=workdir,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    deadline = time.monotonic() + TIMEOUT
    try:
        while time.monotonic() < deadline and proc.poll() is None:
            done = by_shard(shards(workdir))
            whole = [s for s, stores in done.items() if len(stores) == len(VARIANTS)]
            started = [p.stem + ".zarr" for p in logs.glob("shard-*.log")]
            if len(whole) == 1 and len(started) == 2 and sum(map(len, done.values())) < n_shards:
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
def runs(finished_run, tmp_path_factory):
    """(the finished run, its files' digests when copied, the killed and resumed copy, the
    shards at the kill, the resumed run's log, the number of MODEL's ablation shards)."""
    whole, configs = finished_run
    n_shards = len(shards(whole))
    assert n_shards == 2 * len(VARIANTS), n_shards  # two token shards: kill between their jobs
    killed = link_project(tmp_path_factory.mktemp("killed"))
    for name in ("results", "resources", ".snakemake"):
        shutil.copytree(whole / name, killed / name, symlinks=True)
    digests = result_files(killed)  # the uninterrupted run's, as copied
    drop_ablation_stage(killed, whole)
    before = kill_during_ablation(killed, configs, targets(whole), n_shards)
    # What a user does after a crash: release the lock, then run the same command again.
    run(killed, configs, "--unlock")
    log = run(killed, configs, "--rerun-incomplete", *targets(whole))
    return whole, digests, killed, before, log, n_shards


def test_killed_run_left_only_complete_shards(runs):
    _, _, killed, before, _, n_shards = runs
    assert len(VARIANTS) <= len(before) < n_shards
    for rel in before:  # every store present at the kill was whole (atomic rename)
        open_zarr(killed / rel).load()


def test_resumed_run_reused_finished_shards_and_left_no_temporary_stores(runs):
    _, _, killed, before, log, n_shards = runs
    now = {str(p.relative_to(killed)): p.stat().st_ino for p in shards(killed)}
    assert len(now) == n_shards
    # The finished job's stores are kept; the killed job's, some of them renamed into place
    # before the kill, are all made again (--rerun-incomplete reruns the whole job).
    kept = sorted(rel for rel, inode in before.items() if now[rel] == inode)
    (finished,) = [s for s in by_shard(before).values() if len(s) == len(VARIANTS)]
    assert kept == sorted(finished), (before, now)
    assert "rule ablate:" in log  # the rerun made the shards missing at the kill
    assert "rule train_model:" not in log and "rule tokenize:" not in log  # upstream kept
    assert "rule clean_cache:" not in log
    leftovers = [p for p in (killed / "results").rglob("*") if ".tmp-" in p.name]
    assert not leftovers, leftovers


def test_resumed_numbers_equal_an_uninterrupted_run(runs):
    whole, _, killed, _, _, n_shards = runs
    paths = [p.relative_to(whole) for p in shards(whole)]
    assert len(paths) == n_shards
    for rel in paths + [Path(t) for t in targets(whole)]:
        a, b = open_zarr(whole / rel).load(), open_zarr(killed / rel).load()
        assert set(a.data_vars) == set(b.data_vars), rel
        for name in a.data_vars:
            assert np.array_equal(a[name].values, b[name].values, equal_nan=True), (rel, name)
        assert a.attrs["model_revision"] == b.attrs["model_revision"], rel
        assert "seconds" not in a.attrs, rel


def test_resumed_run_is_byte_identical_to_an_uninterrupted_one(runs):
    _, a, killed, _, _, _ = runs
    b = result_files(killed)
    remade = [
        f for f in a if f.startswith(f"{MODEL}/ablation/") or f.startswith(f"{MODEL}/summary/")
    ]
    assert any(".zarr/" in f for f in remade) and any(f.endswith("training.json") for f in a)
    assert sorted(a) == sorted(b)
    assert [f for f in a if a[f] != b[f]] == []
