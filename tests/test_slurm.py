"""The workflow on a real SLURM cluster: a single-node cluster started on this machine
(tests/slurm/cluster.sh: munged, slurmctld, slurmd, two fake GPUs, no accounting daemon), the
reduced demo's config submitted through Snakemake's SLURM executor plugin with the workflow
profile (profiles/slurm), and every file it writes compared with the same file of the session's
local run of that config (conftest.py's `finished_run`, which the report and explorer tests
share).

The cluster run makes one model's part of the DAG (SLURM_TARGETS), enough for every rule that
runs a model, CPU reductions, a figure, a table, an explorer page, and two ablate shard jobs
(each every ablation variant). It starts from the local run's trained tokenizer and model
(SEEDED): training is the DAG's serial head (a minute of CI on 2 cores) and goes through
the same profile entry as every other model rule, so it is left out of the cluster's part. While it runs, one of those shard jobs is cancelled on the cluster (as a preempted or
killed job would be): the profile's `retries` must resubmit that job alone, with twice the memory
and time.

Needs root and the Debian packages slurm-wlm and munge; without them the module is skipped with
the one-line reason cluster.sh gives (the only skip). It starts its daemons and stops them, by
PID, when the module ends, also on failure.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import yaml
from helpers import link_project, load, merged, result_files

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

# One model's part of the reduced demo: every rule that runs a model (clean_cache,
# ablate on both shards (every variant), atp, task_clean, task_ablate, neuron_effects,
# norm_ratios, repair_detail, self_reinforcement) and CPU jobs (tokenize, summaries, picks,
# Fig 9, the backup table, the explorer page). The other model's jobs are the same rules.
MODEL = "tiny-gpt2"
SLURM_TARGETS = (
    f"results/{MODEL}/atp/resample.zarr",
    f"results/{MODEL}/norms/resample.zarr",
    f"results/{MODEL}/attribution/detail-resample.zarr",
    f"results/{MODEL}/neurons/selected.zarr",
    f"results/{MODEL}/tasks/induction/tables/backup_heads.csv",
    f"results/explorer/{MODEL}.html",
    "results/figures/fig09_self_repression.pdf",
)
# Copied from the local run before the cluster run starts (with their times, so not remade): the
# trained tokenizer and model, and what train_model writes beside them.
SEEDED = ("resources/tokenizers", f"resources/models/{MODEL}", f"results/{MODEL}/training.json")
# The job the test cancels while it runs (comment the plugin gives it: rule, then wildcards).
VICTIM = f"rule_ablate_wildcards_{MODEL}_001"


def time_limit(minutes: int) -> str:
    """A job's TimeLimit as squeue prints it (under a day)."""
    return f"{minutes // 60:02d}:{minutes % 60:02d}:00"


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


def snakemake(workdir: Path, configs: tuple[str, ...], *args: str) -> str:
    """Run the workflow in workdir (laid out as finished_run's) with the demo run's config files;
    its output, or a failure."""
    env = {k: v for k, v in os.environ.items() if k not in SITE_VARIABLES}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env["SELFREPAIR_SLURM_PARTITION"] = PARTITION
    cmd = [sys.executable, "-m", "snakemake", "--configfile", *configs, *args]
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
    # SEEDED files have no Snakemake record in the new folder, and through this executor a file
    # without one reads as "code has changed": their times decide, as on a first run.
    "--rerun-triggers", "mtime",
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
def runs(slurm_cluster, finished_run, tmp_path_factory):
    """SLURM_TARGETS made on the cluster from the demo run's config, beside the finished local
    run of the same config (made once per session; its files are the reference)."""
    local, configs = finished_run
    cluster = link_project(tmp_path_factory.mktemp("slurm"))  # as finished_run's
    for rel in SEEDED:
        (cluster / rel).parent.mkdir(parents=True, exist_ok=True)
        copy = shutil.copytree if (local / rel).is_dir() else shutil.copy2
        copy(local / rel, cluster / rel)
    args = (*SLURM_ARGS, *SLURM_TARGETS)
    expected = jobs_per_rule(snakemake(cluster, configs, *args, "--dry-run", "--quiet", "rules"))
    canceller = Canceller(VICTIM, timeout=RUN_TIMEOUT)
    canceller.start()
    t0 = time.monotonic()
    try:
        output = snakemake(cluster, configs, *args)
    finally:
        canceller.stop.set()
        canceller.join()
    print(f"SLURM run {time.monotonic() - t0:.0f} s for {sum(expected.values())} jobs")
    run_id = re.search(r"SLURM run ID: (\S+)", output).group(1)
    # the model jobs' resources as the run merges them: config.yaml's, then each config file's
    config = load("config.yaml")
    for name in configs:
        config = merged(config, yaml.safe_load((local / name).read_text()))
    resources = config["resources"]
    # an ablate job runs every ablation variant: its runtime is one kind's times theirs
    kinds = {"ablate": len(config["ablations"]) + len(config["engine"]["frozen_ln"])}
    return dict(
        local=local,
        cluster=cluster,
        output=output,
        expected=expected,
        resources=resources,
        kinds=kinds,
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
    gpu_rules = {"clean_cache", "ablate", "atp"}
    gpu_rules |= {"neuron_effects", "norm_ratios", "self_reinforcement", "repair_detail"}
    gpu_rules |= {"task_ablate"}
    resources = runs["resources"]
    assert gpu_rules <= set(runs["expected"]) and set(runs["expected"]) - gpu_rules
    gpu_rules |= {
        "task_atp",
        "task_atp_per_kind",
        "checkpoint_ablate",
        "set_ablate",
        "task_set_ablate",
        "task_methods",
        "train_model",  # SEEDED: trained before the cluster run
    }  # model rules these runs may not ask
    for job in runs["jobs"]:
        rule = rule_of(job["Comment"])
        has_gpu = "gpu:1" in job.get("TresPerJob", "")
        assert has_gpu == (rule in gpu_rules), (rule, job.get("TresPerJob"))
        if rule in gpu_rules and job["JobId"] != runs["cancelled"] and job["Comment"] != VICTIM:
            assert job["NumCPUs"] == str(resources["threads"])
            assert job["MinMemoryNode"] == f"{resources['mem_mb']}M"
            assert job["TimeLimit"] == time_limit(runs["kinds"].get(rule, 1) * resources["runtime"])


def test_cancelled_shard_reran_alone_with_more_memory_and_time(runs):
    assert runs["cancelled"], f"the job {VICTIM} was never seen running, so never cancelled"
    resources = runs["resources"]
    victim = [j for j in runs["jobs"] if j["Comment"] == VICTIM]
    first, retry = sorted(victim, key=lambda j: int(j["JobId"]))
    assert first["JobId"] == runs["cancelled"] and first["JobState"] == "CANCELLED"
    assert retry["JobState"] == "COMPLETED"
    assert retry["MinMemoryNode"] == f"{2 * resources['mem_mb']}M"
    assert retry["TimeLimit"] == time_limit(2 * runs["kinds"]["ablate"] * resources["runtime"])
    # Every other job, the other shard included, was submitted once.
    per_job = Counter(j["Comment"] for j in runs["jobs"])
    assert per_job.pop(VICTIM) == 2 and set(per_job.values()) == {1}
    assert f"rule_ablate_wildcards_{MODEL}_000" in per_job


def test_status_came_from_squeue_without_accounting(runs):
    sacct = subprocess.run(["sacct", "-n"], capture_output=True, text=True)
    assert sacct.returncode != 0  # no slurmdbd here: the run cannot have relied on sacct
    assert "Falling back to 'sacct'" not in runs["output"]


def zarr_stores(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in (root / "results").rglob("*.zarr"))


def test_outputs_equal_a_local_run(runs):
    """Every Zarr store (tokens, clean and ablation shards, summaries) of the SLURM run holds
    the same data variables and coordinates as the local run's, to 1e-6."""
    stores = zarr_stores(runs["cluster"])
    assert set(stores) <= set(zarr_stores(runs["local"]))
    for part in ("/clean/", "/ablation/", "/summary/", "/atp/", "/tasks/", "/neurons/"):
        assert any(part in s for s in stores), part
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


def test_every_result_file_is_the_same_bytes_as_the_local_run(runs):
    """Two independent runs of one config (the session's local run, and through SLURM with a
    cancelled and resubmitted shard) write the same bytes: every store, figure (PDF and PNG),
    table, pick record and JSON that the SLURM run made under results/, the logs and benchmark
    timings aside; and it made every file its targets need."""
    local, cluster = result_files(runs["local"]), result_files(runs["cluster"])
    for kind in (".zarr/", ".pdf", ".png", ".csv", ".html", ".json"):
        assert any(kind in f for f in cluster), kind
    for target in SLURM_TARGETS:
        rel = target.removeprefix("results/")
        assert any(f == rel or f.startswith(f"{rel}/") for f in cluster), target
    assert set(cluster) <= set(local), sorted(set(cluster) - set(local))[:5]
    assert [f for f in cluster if local[f] != cluster[f]] == []
