"""The workflow on a real SLURM cluster: a single-node cluster started on this machine
(tests/slurm/cluster.sh: munged, slurmctld, slurmd, two fake GPUs, no accounting daemon), the
reduced demo submitted through Snakemake's SLURM executor plugin with the workflow profile
(profiles/slurm), and compared store by store with the same run made locally.

While it runs, one ablation shard job is cancelled on the cluster (as a preempted or killed job
would be): the profile's `retries` must resubmit that job alone, with twice the memory and time.

Needs root and the Debian packages slurm-wlm and munge; without them the module is skipped with
the one-line reason cluster.sh gives (the only skip). It starts its daemons and stops them, by
PID, when the module ends, also on failure.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import yaml
from helpers import result_files
from toy import toy_model

from selfrepair.stages.store import open_zarr

pytestmark = [pytest.mark.slurm, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[1]
CLUSTER = ROOT / "tests" / "slurm" / "cluster.sh"
PROFILE = ROOT / "profiles" / "slurm"
PARTITION = "debug"  # cluster.sh's partition
SITE_VARIABLES = (
    "SELFREPAIR_SLURM_ACCOUNT",
    "SELFREPAIR_SLURM_PARTITION",
    "SELFREPAIR_GPU_PARTITION",
    "SELFREPAIR_GPU_MODEL",
)
RUN_TIMEOUT = 1500

# The reduced demo: config.yaml, then demo.yaml, then these overrides (Snakemake's merge: key by
# key for mappings). Two shards per model, so that a failed shard can rerun alone.
MODEL_RESOURCES = {"threads": 1, "mem_mb": 1000, "runtime": 10}
REDUCED = {
    "data": {"n_tokens": 24 * 31, "seq_len": 32, "shard_rows": 12},
    "mechanisms": {"reinforcement": {"rows": 12}},
    "engine": {"batch_size": 8, "frozen_ln": []},
    "ablations": ["resample"],  # one is enough: the others are the same rule
    "resources": MODEL_RESOURCES,
    "tokenizers": {"stdlib-bpe": {"vocab_size": 300}},
    "models": [toy_model("tiny-gpt2", "gpt2"), toy_model("tiny-pythia", "pythia")],
    "tasks": {"induction": {"n_prompts": 4, "length": 6}},
}
# The job the test cancels while it runs (comment the plugin gives it: rule, then wildcards).
VICTIM = "rule_ablate_wildcards_tiny-gpt2_resample_001"


def tail(text: str, lines: int = 60) -> str:
    return "\n".join(text.splitlines()[-lines:])


@pytest.fixture(scope="module")
def slurm_cluster():
    """The test cluster, started for this module and stopped (by PID) after it."""
    start = subprocess.run([str(CLUSTER), "start"], capture_output=True, text=True, timeout=300)
    if start.returncode == 3:
        reason = start.stderr.strip().splitlines()[-1].replace("CANNOT START: ", "")
        pytest.skip(f"SLURM test cluster cannot start here: {reason}")
    try:
        if start.returncode != 0:
            pytest.fail(f"tests/slurm/cluster.sh start failed:\n{start.stdout}\n{start.stderr}")
        print(start.stdout.strip())
        yield
    finally:
        stop = subprocess.run([str(CLUSTER), "stop"], capture_output=True, text=True, timeout=120)
        print(stop.stdout.strip(), stop.stderr.strip())


def snakemake(workdir: Path, *args: str) -> str:
    """Run the workflow in workdir with the reduced demo config; its output, or a failure."""
    configs = [
        ROOT / "config" / "config.yaml",
        ROOT / "config" / "demo.yaml",
        workdir / "reduced.yaml",
    ]
    env = {k: v for k, v in os.environ.items() if k not in SITE_VARIABLES}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env["SELFREPAIR_SLURM_PARTITION"] = PARTITION
    cmd = [
        sys.executable, "-m", "snakemake",
        "--snakefile", str(ROOT / "workflow" / "Snakefile"),
        "--configfile", *map(str, configs),
        *args,
    ]  # fmt: skip
    proc = subprocess.run(
        cmd, cwd=workdir, env=env, capture_output=True, text=True, timeout=RUN_TIMEOUT
    )
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, f"snakemake {' '.join(args)} failed:\n{tail(out)}"
    return out


SLURM_ARGS = (
    "--workflow-profile", str(PROFILE),
    # This cluster has no accounting daemon: job states come from squeue (MinJobAge is an hour).
    "--slurm-status-command", "squeue",
    "--slurm-init-seconds-before-status-checks", "2",
    "--slurm-keep-successful-logs",
    "--latency-wait", "5",
    "--jobs", "4",
)  # fmt: skip


def jobs_per_rule(dry_run_output: str) -> Counter:
    """The 'Job stats' table of a dry run: jobs per rule, without the local target rule."""
    counts = Counter()
    for line in dry_run_output.split("Job stats:", 1)[1].splitlines():
        parts = line.split()
        if parts and parts[0] == "total":
            break
        if len(parts) == 2 and parts[1].isdigit() and parts[0] != "all":
            counts[parts[0]] = int(parts[1])
    return counts


def slurm_jobs(run_id: str) -> list[dict[str, str]]:
    """Every job this cluster holds for one Snakemake run (the plugin names jobs by run ID)."""
    out = subprocess.run(
        ["scontrol", "show", "job", "--oneliner"], capture_output=True, text=True, check=True
    ).stdout
    jobs = []
    for line in out.splitlines():
        items = re.split(r"\s+(?=[A-Za-z:/]+=)", line.strip())
        fields = dict(item.strip().split("=", 1) for item in items if "=" in item)
        if fields.get("JobName") == run_id:
            jobs.append(fields)
    return jobs


def rule_of(comment: str) -> str:
    match = re.fullmatch(r"rule_(.+?)(?:_wildcards_.*)?", comment)
    assert match, f"unexpected job comment {comment!r}"
    return match.group(1)


class Canceller(threading.Thread):
    """Cancels the job with the given comment once it runs, as a node failure would."""

    def __init__(self, comment: str, timeout: float):
        super().__init__(daemon=True)
        self.comment, self.timeout = comment, timeout
        self.job_id: str | None = None
        self.stop = threading.Event()

    def run(self) -> None:
        deadline = time.monotonic() + self.timeout
        while not self.stop.is_set() and time.monotonic() < deadline:
            out = subprocess.run(
                ["squeue", "-h", "-t", "RUNNING", "-o", "%i|%k"], capture_output=True, text=True
            ).stdout
            for line in out.splitlines():
                job_id, _, comment = line.partition("|")
                if comment == self.comment:
                    time.sleep(1.0)  # inside the job step by now
                    subprocess.run(["scancel", job_id], check=True)
                    self.job_id = job_id
                    return
            time.sleep(0.2)


@pytest.fixture(scope="module")
def runs(slurm_cluster, tmp_path_factory):
    """The reduced demo run locally and on the cluster, in two directories. The local run goes
    side by side with the cluster's (they share no files): the cluster run spends most of its
    wall time waiting on submissions and status checks."""
    local = tmp_path_factory.mktemp("local")
    cluster = tmp_path_factory.mktemp("slurm")
    for workdir in (local, cluster):
        (workdir / "reduced.yaml").write_text(yaml.safe_dump(REDUCED))
    expected = jobs_per_rule(snakemake(cluster, *SLURM_ARGS, "--dry-run", "--quiet", "rules"))

    def timed(workdir: Path, *args: str) -> tuple[str, float]:
        t0 = time.monotonic()
        return snakemake(workdir, *args), time.monotonic() - t0

    canceller = Canceller(VICTIM, timeout=RUN_TIMEOUT)
    canceller.start()
    with ThreadPoolExecutor(max_workers=1) as pool:
        local_run = pool.submit(timed, local, "--cores", "1")
        try:
            output, slurm_s = timed(cluster, *SLURM_ARGS)
        finally:
            canceller.stop.set()
            canceller.join()
        local_s = local_run.result()[1]
    run_id = re.search(r"SLURM run ID: (\S+)", output).group(1)
    print(f"local run {local_s:.0f} s, SLURM run {slurm_s:.0f} s")
    return dict(
        local=local,
        cluster=cluster,
        output=output,
        expected=expected,
        jobs=slurm_jobs(run_id),
        cancelled=canceller.job_id,
    )


def test_every_job_went_through_sbatch(runs):
    """Each job of the DAG (but the local target `all`) was a SLURM job that completed, in the
    partition named by the profile's environment variable; one was cancelled and rerun."""
    assert runs["expected"], "the dry run listed no jobs"
    completed = Counter(rule_of(j["Comment"]) for j in runs["jobs"] if j["JobState"] == "COMPLETED")
    assert completed == runs["expected"]
    assert {j["Partition"] for j in runs["jobs"]} == {PARTITION}
    assert Counter(j["JobState"] for j in runs["jobs"]) == Counter(
        COMPLETED=sum(runs["expected"].values()), CANCELLED=1
    )


def test_gpu_only_for_the_rules_that_run_a_model(runs):
    """--gpus=1 on the rules that run a model; no GPU on tokenize, reductions, figures.
    Threads and memory of model jobs are the config's `resources`."""
    gpu_rules = {"clean_cache", "ablate", "train_model"}
    gpu_rules |= {"neuron_effects", "norm_ratios", "self_reinforcement", "repair_detail"}
    gpu_rules |= {"task_clean", "task_ablate"}
    assert gpu_rules <= set(runs["expected"]) and set(runs["expected"]) - gpu_rules
    for job in runs["jobs"]:
        rule = rule_of(job["Comment"])
        has_gpu = "gpu:1" in job.get("TresPerJob", "")
        assert has_gpu == (rule in gpu_rules), (rule, job.get("TresPerJob"))
        if rule in gpu_rules and job["JobId"] != runs["cancelled"] and job["Comment"] != VICTIM:
            assert job["NumCPUs"] == str(MODEL_RESOURCES["threads"])
            assert job["MinMemoryNode"] == f"{MODEL_RESOURCES['mem_mb']}M"
            assert job["TimeLimit"] == f"00:{MODEL_RESOURCES['runtime']:02d}:00"


def test_cancelled_shard_reran_alone_with_more_memory_and_time(runs):
    assert runs["cancelled"], f"the job {VICTIM} was never seen running, so never cancelled"
    victim = [j for j in runs["jobs"] if j["Comment"] == VICTIM]
    first, retry = sorted(victim, key=lambda j: int(j["JobId"]))
    assert first["JobId"] == runs["cancelled"] and first["JobState"] == "CANCELLED"
    assert retry["JobState"] == "COMPLETED"
    assert retry["MinMemoryNode"] == f"{2 * MODEL_RESOURCES['mem_mb']}M"
    assert retry["TimeLimit"] == f"00:{2 * MODEL_RESOURCES['runtime']:02d}:00"
    # Every other job, the other shard of the same ablation included, was submitted once.
    per_job = Counter(j["Comment"] for j in runs["jobs"])
    assert per_job.pop(VICTIM) == 2 and set(per_job.values()) == {1}
    assert "rule_ablate_wildcards_tiny-gpt2_resample_000" in per_job


def test_status_came_from_squeue_without_accounting(runs):
    sacct = subprocess.run(["sacct", "-n"], capture_output=True, text=True)
    assert sacct.returncode != 0  # no slurmdbd here: the run cannot have relied on sacct
    assert "Falling back to 'sacct'" not in runs["output"]


def zarr_stores(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in (root / "results").rglob("*.zarr"))


def test_outputs_equal_a_local_run(runs):
    """Every Zarr store (tokens, clean and ablation shards, summaries) of the SLURM run holds
    the same data variables and coordinates as the local run's, to 1e-6."""
    stores = zarr_stores(runs["local"])
    assert stores == zarr_stores(runs["cluster"])
    assert any("/ablation/" in s for s in stores) and any("/summary/" in s for s in stores)
    for rel in stores:
        a, b = open_zarr(runs["local"] / rel), open_zarr(runs["cluster"] / rel)
        assert set(a.data_vars) == set(b.data_vars) and a.data_vars, rel
        for name in [*a.data_vars, *a.coords]:
            x, y = a[name].values, b[name].values
            assert a[name].dims == b[name].dims and x.shape == y.shape, (rel, name)
            if np.issubdtype(x.dtype, np.floating):
                np.testing.assert_allclose(
                    y, x, rtol=0, atol=1e-6, equal_nan=True, err_msg=f"{rel}:{name}"
                )
            else:
                np.testing.assert_array_equal(y, x, err_msg=f"{rel}:{name}")
    figures = sorted(p.name for p in (runs["local"] / "results" / "figures").glob("*.png"))
    assert figures and figures == sorted(
        p.name for p in (runs["cluster"] / "results" / "figures").glob("*.png")
    )


def test_every_result_file_is_the_same_bytes_as_the_local_run(runs):
    """Two independent runs of one config (here, and through SLURM with a cancelled and
    resubmitted shard) write the same bytes: every store, figure (PDF and PNG), table, pick
    record and JSON under results/, the logs and benchmark timings aside."""
    local, cluster = result_files(runs["local"]), result_files(runs["cluster"])
    for kind in (".zarr/", ".pdf", ".png", ".csv", ".html", ".json"):
        assert any(kind in f for f in local), kind
    assert sorted(local) == sorted(cluster)
    assert [f for f in local if local[f] != cluster[f]] == []
