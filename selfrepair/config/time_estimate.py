"""How long the planned jobs take, estimated before the first job and printed under the storage
table (the Snakefile's onstart; check_time): each job's matrix-product FLOPs from the model's
shapes and the rows it runs, divided by a rate, plus a fixed time per job (Python's start, the
imports, reading and writing stores). An estimate, not a measurement, and it says so.

The FLOPs are selfrepair.flops' counts (checked against torch's FLOP counter in
tests/test_flops.py), per row: clean_cache (a task's too) one forward pass; ablate (every
ablation variant: one after the other), checkpoint_ablate and task_ablate measure_heads'
(engine_flops of every head); atp (every ablation: the kinds share
the passes) AtP's forward and backward pass,
GradDrop's passes and each head's own backward pass (with GradDrop's when
engine.atp_top_graddrop); the mechanism experiments a forward pass per head they run;
task_set_ablate and set_ablate one per set and the clean pass; train_model 3 forward passes' worth per step.
The rate: `estimate.flops_per_second`, else measured here (a float32 matrix product with
numpy, about 0.2 s) when the jobs run on this machine's CPU, else an assumed GPU rate (GPU_FLOPS)."""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Iterable
from typing import Any

from selfrepair import flops
from selfrepair.config.errors import ConfigError
from selfrepair.config.layout import ablation_variants, estimated_as, n_rows
from selfrepair.config.memory import cached_hub_entry, model_size
from selfrepair.config.tasks import task_shape

__all__ = ["GPU_FLOPS", "RUNTIME_MARGIN", "check_time", "job_flops"]
__all__ += ["fastest_rate", "jobs_on_cpu", "measured_rate", "time_lines"]

# An H100's dense float32-with-TF32 rate is about 4e14; the engine's small products reach a
# fraction of it. Used only when the jobs run on a GPU and estimate.flops_per_second is null.
GPU_FLOPS = 5e13
# A job is refused when its estimate exceeds its resources.runtime this many times over: the
# estimate is rough (a peak matmul rate, a loaded machine), and a refusal must be sure.
RUNTIME_MARGIN = 10


def _per_row(rule: str, size: Any, seq: int, engine: dict[str, Any]) -> int:
    """One row's FLOPs of a clean_cache, ablate or atp job (selfrepair.flops)."""
    if rule == "clean_cache":
        return flops.forward_flops(size, seq)
    if rule == "ablate":
        return flops.engine_flops(size, seq, flops.all_heads(size))
    top_graddrop = bool(engine.get("atp_top_graddrop"))
    return (
        flops.atp_flops(size, seq)
        + flops.graddrop_flops(size, seq)
        + flops.head_unit_flops(size, seq, graddrop=top_graddrop)
    )


def job_flops(run: Any, rule: str, w: dict[str, str]) -> float | None:
    """The matmul FLOPs of one planned job (0: none worth counting; None: the model's size is
    unknown to the config).

    Args:
        run: storage._Run of the config.
        rule: the job's rule name.
        w: its wildcards.
    """
    rule, w = estimated_as(rule, w)
    if "model" not in w:
        return 0.0
    model = run.model(w["model"])
    entry, dims = run.models[model], run.dims.get(model)
    size = model_size(cached_hub_entry(entry), run.config)
    if size is None or dims is None:
        return None
    if not size.n_heads:  # a config.json without a head count: the run's dims know it
        size = dataclasses.replace(size, n_heads=dims.n_heads)
    seq = run.data["seq_len"]
    if rule == "train_model":
        train = entry["train"]
        return 3.0 * train["steps"] * train["batch_size"] * flops.forward_flops(size, seq)
    if rule in ("clean_cache", "ablate", "checkpoint_ablate", "atp", "set_ablate"):
        rows = run.shard(w["shard"])[0]
        if rule == "set_ablate":  # the clean pass and one per set
            n_passes = 1 + len(run.config["ablation_sets"])
            return float(n_passes * rows * flops.forward_flops(size, seq))
        if rule.endswith("ablate"):  # ablate: every variant, one after the other
            kinds = 1 if "ablation" in w else len(ablation_variants(run.config))
            return float(kinds * rows * _per_row("ablate", size, seq, run.config["engine"]))
        return float(rows * _per_row(rule, size, seq, run.config["engine"]))
    if rule in ("neuron_effects", "norm_ratios", "self_reinforcement"):
        experiment = {"neuron_effects": "neurons", "norm_ratios": "norms"}.get(
            rule, "reinforcement"
        )
        shown = max(run.shown(w["model"], experiment), 1)
        return float(shown * n_rows(run.data) * flops.forward_flops(size, seq))
    task_rules = ("task_clean", "task_ablate", "task_set_ablate", "task_methods")
    if rule in (*task_rules, "task_atp", "task_atp_per_kind"):
        spec = run.config["tasks"][w["task"]]
        rows, answers, width = task_shape(run.config, spec, entry)
        if rule == "task_ablate":
            return float(rows * _per_row("ablate", size, width, run.config["engine"]))
        if rule in ("task_atp", "task_atp_per_kind"):  # a backward pass per row, per answer of a
            # row, per dropped layer: shared by the kinds of a task_atp job
            passes = 1 + size.n_layers * (1 + answers // max(rows, 1))
            return float(3.0 * passes * rows * flops.forward_flops(size, width))
        if rule == "task_methods":  # per candidate two passes; EAP-IG per layer and step, and
            # the two gradients, forward and backward (3 forward's worth): full passes, a bound
            steps = spec["methods"]["eap_ig_steps"]
            passes = 2 * size.heads + 3 * (steps * size.n_layers + 2)
            return float(passes * rows * flops.forward_flops(size, width))
        n_passes = 1 + (len(spec["ablation_sets"]) if rule == "task_set_ablate" else 0)
        return float(n_passes * rows * flops.forward_flops(size, width))
    return 0.0


def measured_rate(seconds: float = 0.2, n: int = 512, clock=time.perf_counter) -> float:
    """FLOP/s of float32 [n, n] x [n, n] products with numpy on this machine: the fastest of the
    products timed for about `seconds` (after one warm-up product). The fastest, not the mean:
    on a machine other jobs load for a moment, the mean fell 30-fold (a run's check then refused
    jobs it would finish), while some product still gets the cores to itself."""
    import numpy as np

    a = np.random.default_rng(0).standard_normal((n, n), dtype=np.float32)
    a @ a
    times, start = [], clock()
    while clock() - start < seconds:
        began = clock()
        a @ a
        times.append(clock() - began)
    return fastest_rate(times, n)


def fastest_rate(times: list[float], n: int) -> float:
    """FLOP/s of the fastest of [n, n] x [n, n] products that took `times` seconds."""
    return 2 * n**3 / min(times)


def _rate(config: dict[str, Any], on_cpu: bool) -> tuple[float, str]:
    """(FLOP/s, how it was found)."""
    given = config["estimate"]["flops_per_second"]
    if given:
        return float(given), "estimate.flops_per_second"
    if on_cpu:
        return measured_rate(), "measured here: a float32 matrix product with numpy"
    return GPU_FLOPS, "assumed for a GPU; set estimate.flops_per_second"


def _duration(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 90 * 60:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def time_lines(
    flops: list[float | None], rate: float, how: str, per_job: float, cores: int, where: str = ""
) -> str:
    """The estimate as printed: jobs, FLOPs, the rate and how it was found, the total one job
    at a time and with `cores` jobs at once (`where` says so: default "on N cores"), and how
    many jobs' FLOPs are unknown."""
    known = sum(f for f in flops if f is not None)
    unknown = sum(f is None for f in flops)
    serial = known / rate + per_job * len(flops)
    lines = [
        f"Time estimate (an estimate from the config and the shapes, not a measurement): "
        f"{len(flops)} jobs, {known:.2g} FLOPs of matrix products at {rate:.2g} FLOP/s ({how}) "
        f"plus {per_job:g} s a job (estimate.seconds_per_job): about {_duration(serial)} one "
        f"job at a time, about {_duration(serial / max(cores, 1))} "
        f"{where or ('on 1 core' if cores == 1 else f'on {cores} cores')}."
    ]
    if unknown:
        lines.append(f"  ({unknown} jobs' FLOPs unknown: their model's size is not in the config)")
    return "\n".join(lines)


def jobs_on_cpu(config: dict[str, Any], local_exec: bool) -> bool:
    """Whether the jobs run on this machine's CPU: run here, on device cpu (or auto without
    CUDA, which check_machine has already asked torch)."""
    device = config["device"]
    if not local_exec or device not in ("cpu", "auto"):
        return False
    if device == "cpu":
        return True
    import torch

    return not torch.cuda.is_available()


def check_time(
    config: dict[str, Any],
    models: dict[str, dict[str, Any]],
    jobs: Iterable[Any],
    cores: int | None,
    on_cpu: bool,
    out: Any = None,
    nodes: int | None = None,
) -> float:
    """Print the estimate (time_lines) to `out` (default stderr), then refuse in one line the
    first job whose estimate exceeds its resources.runtime (minutes) RUNTIME_MARGIN times over,
    naming the key and the fix: the Snakefile's onstart. Returns the serial estimate in seconds.

    Args:
        config: the validated workflow config.
        models: its model entries (the rules' MODELS).
        jobs: the planned jobs (.rule.name, .wildcards, .resources).
        cores: the cores a local run has (--cores); None on a cluster.
        on_cpu: whether the jobs run on this machine's CPU (jobs_on_cpu: the rate is then
            measured here).
        out: where to print.
        nodes: the jobs a cluster run submits at once (--jobs), when cores is None.
    """
    import sys

    from selfrepair.config.storage import _Run

    run, jobs = _Run(config, models), list(jobs)
    rate, how = _rate(config, on_cpu)
    per_job = float(config["estimate"]["seconds_per_job"])
    flops = [job_flops(run, job.rule.name, dict(job.wildcards.items())) for job in jobs]
    at_once, where = (cores, "") if cores else (nodes or 1, f"with {nodes or 1} jobs at once")
    print(time_lines(flops, rate, how, per_job, at_once, where), file=out or sys.stderr)
    for job, f in zip(jobs, flops, strict=True):
        runtime = int((getattr(job, "resources", None) or {}).get("runtime", 0) or 0)
        if f is not None and runtime and f / rate > RUNTIME_MARGIN * 60 * runtime:
            w = dict(job.wildcards.items())
            key = f"models[{run.model(w['model'])}].resources.runtime (or resources.runtime)"
            raise ConfigError(
                f"config key {key}: job {job.rule.name} {w} is estimated at "
                f"{_duration(f / rate)} ({f:.2g} FLOPs at {rate:.2g} FLOP/s, {how}), over "
                f"{RUNTIME_MARGIN} times its runtime of {runtime} min; make the job smaller "
                "(fewer prompts, data.shard_rows) or raise the runtime"
            )
    return sum(f for f in flops if f is not None) / rate + per_job * len(flops)
