"""The time estimate printed at the start of a run (selfrepair.config.time_estimate): the FLOP
formulas by hand, the printed lines, and the workflow's own path: a real `snakemake --cores 1`
prints it under the storage table in its onstart, and stops before any job when a job is
estimated far beyond its resources.runtime."""

from __future__ import annotations

import io
from types import SimpleNamespace

import pytest
from helpers import load, merged, reduced_demo_config, snakemake
from tasks_helpers import prompts_task_run

import selfrepair.config as sr_config
from selfrepair import flops
from selfrepair.config import time_estimate
from selfrepair.config.time_estimate import fastest_rate, job_flops, time_lines


def test_job_flops_are_selfrepair_flops_per_row_by_hand():
    config = merged(load("config.yaml"), reduced_demo_config())
    models = sr_config.validate_run(config)
    run = sr_config.storage._Run(config, models)
    size = sr_config.memory.model_size(models["tiny-gpt2"], config)
    seq, w = config["data"]["seq_len"], {"model": "tiny-gpt2", "shard": "000"}
    rows = run.shard("000")[0]
    # per token: layers x 2 x (4 d^2, W_in and W_out 2 d d_mlp) + 2 d vocab, and causal
    # attention's scores and mixing: layers x 4 d x query-key pairs
    d, n_layers = size.d_model, size.n_layers
    per_token = n_layers * 2 * (4 * d * d + 2 * d * size.d_mlp) + 2 * d * size.d_vocab
    attention = n_layers * 4 * d * seq * (seq + 1) // 2
    assert flops.forward_flops(size, seq) == seq * per_token + attention
    assert job_flops(run, "clean_cache", w) == rows * (seq * per_token + attention)
    engine = flops.engine_flops(size, seq, flops.all_heads(size))
    # an ablate job runs every ablation variant (4: three ablations, resample frozen), a
    # checkpoint's one
    assert job_flops(run, "ablate", w) == 4 * rows * engine
    one = {"model": "tiny-gpt2@step50", "ablation": "resample", "shard": "000"}
    assert job_flops(run, "checkpoint_ablate", one) == rows * engine


def test_every_model_job_of_the_demo_has_flops_and_the_lines_say_estimate():
    config = merged(load("config.yaml"), reduced_demo_config())
    models = sr_config.validate_run(config)
    run = sr_config.storage._Run(config, models)
    w = {"model": "tiny-gpt2", "shard": "000"}
    clean, ablate = job_flops(run, "clean_cache", w), job_flops(run, "ablate", w)
    assert clean > 0 and ablate > 4 * clean  # every head: its later blocks
    assert job_flops(run, "fig01", {}) == 0.0
    task = {"model": "tiny-gpt2", "task": "induction", "task_ablation": "corrupted"}
    assert job_flops(run, "task_ablate", task) > job_flops(run, "task_clean", task) > 0
    assert job_flops(run, "train_model", {"model": "tiny-gpt2"}) > ablate
    text = time_lines([1e12, None, 0.0], 1e10, "measured here", 5.0, 2)
    assert text.startswith("Time estimate (an estimate from the config and the shapes")
    assert "3 jobs, 1e+12 FLOPs" in text and "about 2 min one job at a time" in text
    assert "(1 jobs' FLOPs unknown" in text and text.split("\n")[0].endswith("on 2 cores.")
    one = time_lines([1e12], 1e10, "measured here", 5.0, 1)
    assert one.endswith("on 1 core.")


def _job(rule, runtime=20, **wildcards):
    return SimpleNamespace(rule=SimpleNamespace(name=rule), wildcards=wildcards,
                           resources={"runtime": runtime})  # fmt: skip


def test_the_measured_rate_is_the_fastest_product_not_the_mean():
    """A moment of load slows most products; the rate is the fastest one's, so the check does
    not refuse a run because other jobs were busy while it measured."""
    assert fastest_rate([0.04, 0.001, 0.02], 10) == pytest.approx(2 * 10**3 / 0.001)
    # the clock read at the start, then per product at the loop's test, before and after it:
    # products of 0.09, 0.01, 0.09 and 0.09 s (the mean would give 0.07 s), then time is up
    clock, ticks = 0.0, [0.0]
    for took in (0.09, 0.01, 0.09, 0.09):
        ticks += [clock, clock, clock + took]
        clock += took
    ticks.append(1.0)
    rate = time_estimate.measured_rate(seconds=0.5, n=8, clock=iter(ticks).__next__)
    assert rate == pytest.approx(2 * 8**3 / 0.01)


def test_check_time_refuses_a_job_far_beyond_its_runtime():
    config = merged(load("config.yaml"), reduced_demo_config())
    models = sr_config.validate_run(config)
    jobs = [_job("clean_cache", model="tiny-gpt2", shard="000"), _job("fig01")]
    out = io.StringIO()
    config["estimate"]["flops_per_second"] = 1e12
    assert sr_config.check_time(config, models, jobs, 2, on_cpu=False, out=out) < 60
    assert "(estimate.flops_per_second)" in out.getvalue()
    assert out.getvalue().splitlines()[0].endswith(" on 2 cores.")
    # A cluster run gives no --cores (Snakemake's workflow.cores raises), but --jobs.
    cluster = io.StringIO()
    sr_config.check_time(config, models, jobs, None, on_cpu=False, out=cluster, nodes=4)
    assert cluster.getvalue().splitlines()[0].endswith(" with 4 jobs at once.")
    config["estimate"]["flops_per_second"] = 1.0
    with pytest.raises(sr_config.ConfigError, match=r"^config key models\[tiny-gpt2\]\.resources"):
        sr_config.check_time(config, models, jobs, 2, on_cpu=False, out=out)


@pytest.fixture
def run(tmp_path):
    """A run folder of the reduced demo with a random GPT-2 by path and a prompts task on it."""
    line = {
        "prompt": "Then, Mary and John went to the store. John gave a drink to",
        "answer": " Mary",
    }
    return prompts_task_run(tmp_path, [line] * 3)


def _smk(run, *configs):
    configs = ("config/demo.yaml", ".test/config/config.yaml", "mine.yaml", *configs)
    return snakemake("--cores", "1", "results/rand/tasks/mine/clean/shard-000.zarr", "--configfile",
                     *configs, cwd=run, timeout=600)  # fmt: skip


def test_the_start_of_a_run_prints_the_time_estimate_and_sizes_the_task(run):
    proc = _smk(run)
    assert proc.returncode == 0, proc.stderr[-3000:]
    err = proc.stderr
    assert "The planned jobs take about" in err and "unknown" not in err  # the task is sized
    (line,) = [x for x in err.splitlines() if x.startswith("Time estimate")]
    # task_prompts, process_weights (clean_cache runs on the stand-in) and the task's clean_cache
    assert "3 jobs," in line and "(measured here: a float32 matrix product with numpy)" in line
    assert err.index("The planned jobs take") < err.index("Time estimate") < err.index("jobid")


def test_a_job_far_beyond_its_runtime_stops_the_run_before_any_job(run):
    (run / "slow.yaml").write_text("estimate: {flops_per_second: 1.0}\n")
    proc = _smk(run, "slow.yaml")
    assert proc.returncode != 0
    assert "Finished jobid" not in proc.stderr and not (run / "results/rand/tasks").exists()
    assert (
        "config key models[rand].resources.runtime (or resources.runtime): job clean_cache"
        in proc.stderr
    )
    assert "FLOP/s, estimate.flops_per_second), over 10 times its runtime of 20 min" in proc.stderr
