"""Engine speed against the original code's method and against the machine's matmul peak.

On one model and one set of tokens, in one run, it times
- the engine (selfrepair.engine.self_repair.measure_heads) on every head, with its fused blocks and, for
  comparison, with TransformerLens' own block modules, and with who-repairs-whom measured in the
  same passes (engine.attribution, the workflow's default: its overhead is printed);
- the original code's method (selfrepair.reference.full_forward.full_forward_measure_heads: a clean pass and
  one full forward pass with a hook per head), checking that it gives the engine's numbers;
- attribution patching (selfrepair.engine.atp.measure_atp, beyond the paper) on every head: AtP's
  row estimates (one forward and one backward pass per batch), with AtP*'s GradDrop (L - 1 more
  backward passes, each from its dropped layer down), on each head's top 2% of tokens (one
  backward pass per head; GradDrop one per layer above it, from there down), and per token on a few tokens per row (one backward per token of a row,
  GradDrop's per token too), scaled to every token; and the workflow's atp job, where the
  config's ablation kinds share every pass (measure_atp_kinds, --atp-kinds): its cost per kind;
  AtP is checked against the slow reference (selfrepair.reference.atp), and the engine's time
  over AtP's is printed;
- the machine's peak matmul rate in the same dtype on the same device (square matmuls, best of
  several, measured before and after the runs);
and prints time per 1k tokens, matmul FLOPs counted from the model's shapes (selfrepair/flops.py)
over wall time as a fraction of that peak, peak memory (resident set, or CUDA's allocator) and
peak live tensor bytes (selfrepair/live_tensors.py: deterministic, measured in one more untimed
run of each method). It exits 1 if the engine and the reference disagree. Timings are wall
clock on a machine that may be shared: the load average is printed beside them.

    python benchmarks/benchmark.py --model gpt2-small-random --rows 8 --seq-len 128
    python benchmarks/benchmark.py --model demo:resources/models/tiny-gpt2 --rows 32
    python benchmarks/benchmark.py --model gpt2-small-random --device cuda --dtype bfloat16 \\
        --rows 64
"""

from __future__ import annotations

import argparse
import ctypes
import gc
import json
import os
import sys
import threading
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # this checkout's selfrepair

from selfrepair.catalogue import PAPER_MODELS
from selfrepair.engine.atp import measure_atp, measure_atp_kinds
from selfrepair.engine.attribution import RepairSums
from selfrepair.engine.self_repair import measure_heads
from selfrepair.flops import (
    Shapes,
    atp_flops,
    backward_flops,
    engine_flops,
    forward_flops,
    graddrop_flops,
    head_unit_flops,
    reference_flops,
)
from selfrepair.live_tensors import LiveTensors
from selfrepair.models.builders import random_model
from selfrepair.models.loading import (
    load_local_checkpoint,
    load_model,
    resolve_device,
    resolve_dtype,
)
from selfrepair.reference.atp import reference_atp
from selfrepair.reference.full_forward import full_forward_measure_heads
from selfrepair.variables import HEAD_VARIABLES

GPT2_SMALL = PAPER_MODELS["gpt2-small"].shapes.dims(
    "n_layers", "d_model", "n_heads", "d_head", "d_mlp", "d_vocab", "n_ctx"
)
FLOAT32_ATOL = 1e-3  # engine vs reference, absolute, in logits
ENGINE, ENGINE_TL = "engine (fused blocks)", "engine (TransformerLens blocks)"
ENGINE_ATTRIBUTION = "engine + who repairs whom"
REFERENCE, REFERENCE_CLEAN = "full forward per head (reference)", "reference clean pass"
REDUCED_RTOL = 0.15  # bfloat16/float16 (both sides rounded): fraction of the scale's range
ATP_RTOL = 1e-4  # AtP vs its reference in float32: fraction of the largest row estimate
ATP_ROWS = "AtP, every head (1 forward + 1 backward pass)"
ATP_GRADDROP = "AtP + GradDrop (L - 1 more backward passes)"
GRADDROP = "GradDrop alone"
ATP_TOP = "AtP on each head's top 2% (1 backward pass per head)"
ATP_GD_TOP = "AtP + GradDrop on each head's top 2%"
ATP_GD_TOP_KINDS = "AtP + GradDrop on each head's top 2%, {n} kinds in one job"
TEXT_KINDS = ("resample", "mean", "zero")  # the workflow's ablations (config.yaml, demo.yaml)
ATP_TOKENS = "AtP per token, {k} tokens per row"
ATP_GD_TOKENS = "AtP + GradDrop per token, {k} tokens per row"
EVERY_TOKEN = "{name}: every token (scaled from {k})"


def load(spec: str, device: str, dtype: torch.dtype):
    """gpt2-small-random | tiny-random-<family> | demo:<checkpoint dir> | <TransformerLens name>."""
    if spec == "gpt2-small-random":
        model = random_model("gpt2", **GPT2_SMALL)
        model.cfg.model_name = spec
    elif spec.startswith("tiny-random-"):
        model = random_model(spec.removeprefix("tiny-random-"))
    elif spec.startswith("demo:"):
        model = load_local_checkpoint(spec.removeprefix("demo:"))
    else:
        return load_model(spec, device=device, dtype=dtype)
    model.to(device, print_details=False)
    if dtype != torch.float32:
        model.to(dtype, print_details=False)
    return model.eval()


def random_tokens(model, rows: int, seq_len: int, seed: int = 0) -> torch.Tensor:
    """Uniform random tokens after a BOS; the engine's speed does not depend on the text."""
    if seq_len > model.cfg.n_ctx:
        raise SystemExit(f"--seq-len {seq_len} exceeds the model's context {model.cfg.n_ctx}")
    if rows < 2:
        raise SystemExit("--rows must be at least 2 (resample ablation takes z from another row)")
    gen = torch.Generator().manual_seed(seed)
    tokens = torch.randint(1, model.cfg.d_vocab, (rows, seq_len), generator=gen)
    tok = getattr(model, "tokenizer", None)
    tokens[:, 0] = tok.bos_token_id if tok is not None and tok.bos_token_id is not None else 0
    return tokens


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def timed(fn, device: str):
    """Result, wall seconds and process CPU seconds (all threads) of fn()."""
    sync(device)
    start, cpu = time.perf_counter(), time.process_time()
    out = fn()
    sync(device)
    return out, time.perf_counter() - start, time.process_time() - cpu


def peak_matmul_rate(
    device: str, dtype: torch.dtype, sizes: list[int], repeats: int = 5
) -> dict[str, dict[int, float]]:
    """Best FLOP/s of square n x n matmuls for each n, in dtype on device, per wall second and
    per process CPU second (the latter only on a CPU)."""
    if not sizes:
        sizes = [2048, 4096, 8192] if device.startswith("cuda") else [1024, 2048, 3072]
    wall, cpu = {}, {}
    gen = torch.Generator(device=device).manual_seed(0)
    for n in sizes:
        a = torch.randn(n, n, device=device, dtype=dtype, generator=gen)
        b = torch.randn(n, n, device=device, dtype=dtype, generator=gen)
        out = a @ b  # warm-up
        times = [
            timed(lambda a=a, b=b, out=out: torch.mm(a, b, out=out), device) for _ in range(repeats)
        ]
        wall[n] = 2 * n**3 / min(t[1] for t in times)
        cpu[n] = 2 * n**3 / max(min(t[2] for t in times), 1e-9)
        del a, b, out
    return {"wall": wall, "cpu": cpu}


def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def trim_heap() -> None:
    """Hand freed heap memory back to the OS (glibc's malloc_trim; nothing elsewhere): memory
    that earlier work freed but malloc kept resident would otherwise serve a job unseen, and its
    peak above the entry level read low (0 MiB for the engine after the warm-up runs)."""
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


class PeakMemory:
    """Peak memory above the level at entry: CUDA allocator peak, or CPU resident set size
    sampled every 2 ms (torch's CPU allocations are invisible to tracemalloc), from a heap
    trimmed at entry (trim_heap)."""

    def __init__(self, device: str):
        self.device, self.peak = device, 0

    def __enter__(self):
        if self.device.startswith("cuda"):
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            self.start = torch.cuda.memory_allocated()
        else:
            trim_heap()
            self.start = self.high = rss_bytes()
            self.done = threading.Event()
            self.thread = threading.Thread(target=self.sample, daemon=True)
            self.thread.start()
        return self

    def sample(self):
        while not self.done.wait(0.002):
            self.high = max(self.high, rss_bytes())

    def __exit__(self, *exc):
        if self.device.startswith("cuda"):
            torch.cuda.synchronize()
            self.peak = torch.cuda.max_memory_allocated() - self.start
        else:
            self.done.set()
            self.thread.join()
            self.peak = max(self.high, rss_bytes()) - self.start


def timing_row(name: str, seconds: float, cpu_seconds: float, flops: int, n_tokens: int) -> dict:
    return {
        "method": name,
        "seconds": seconds,
        "cpu_seconds": cpu_seconds,
        "seconds_per_1k_tokens": seconds / n_tokens * 1000,
        "flops": flops,
        "gflop_per_token": flops / n_tokens / 1e9,
        "flop_per_s": flops / seconds,
        "flop_per_cpu_s": flops / max(cpu_seconds, 1e-9),
    }


def peak_live_tensors(fn) -> int:
    """Bytes of the tensors fn() makes that are alive at once, at most (selfrepair.live_tensors:
    the same on every run, unlike the resident set; the weights made before are not counted).
    Run apart from the timed runs, whose every operation it would slow."""
    gc.collect()
    with LiveTensors(depth=0) as live:
        fn()
    return live.peak


def best_of(
    jobs: dict, repeats: int, device: str, n_tokens: int, measure_peak, live: bool = True
) -> tuple:
    """Run every job `repeats` times, round robin (so a busy spell of a shared machine hits the
    methods alike), measuring the peak matmul rate before each round and at the end; then, with
    live, once more untimed for its peak live tensor bytes. Keeps each job's fastest wall and CPU
    time, its largest peak memory, and its first result; returns the rows, the results and the
    peak rates measured."""
    rows, results, rates = {}, {}, []
    for _ in range(repeats):
        rates.append(measure_peak())
        for name, (fn, _) in jobs.items():
            with PeakMemory(device) as mem:
                result, seconds, cpu_seconds = timed(fn, device)
            print(f"  {name}: {seconds:.1f} s wall, {cpu_seconds:.1f} s CPU", flush=True)
            results.setdefault(name, result)
            row = rows.setdefault(name, {"walls": [], "cpus": [], "peak_memory_bytes": 0})
            row["walls"].append(seconds)
            row["cpus"].append(cpu_seconds)
            row["peak_memory_bytes"] = max(row["peak_memory_bytes"], mem.peak)
            del result
    rates.append(measure_peak())
    out = {}
    for name, (fn, flops) in jobs.items():
        r = rows[name]
        r["peak_live_tensor_bytes"] = peak_live_tensors(fn) if live else None
        out[name] = timing_row(name, min(r["walls"]), min(r["cpus"]), flops, n_tokens)
        out[name].update(r)
    return out, results, rates


def spread_heads(n_layers: int, n_heads: int, k: int) -> list[tuple[int, int]]:
    """k heads spread evenly over all (layer, head) pairs (all of them if k is 0 or too big)."""
    pairs = [(layer, head) for layer in range(n_layers) for head in range(n_heads)]
    if k <= 0 or k >= len(pairs):
        return pairs
    return [pairs[int(i)] for i in np.linspace(0, len(pairs) - 1, k).round()]


def compare(engine, reference, heads, reduced: bool) -> dict:
    """Largest |engine - reference| per variable on the reference's heads, with its bound: an
    absolute FLOAT32_ATOL, or in reduced precision REDUCED_RTOL of the range of the quantity's
    scale (logit_diff for the logit parts, whose remainder sr_ln carries every rounding)."""
    scale_of = {"logit_clean": "logit_clean", "ln_scale_clean": "ln_scale_clean"}
    scale_of["ln_scale_ablated"] = "ln_scale_clean"

    def values(ds, name):
        v = ds[name].values
        return np.stack([v[layer, head] for layer, head in heads]) if v.ndim == 4 else v

    out = {}
    for name in (*HEAD_VARIABLES, "logit_clean", "ln_scale_clean"):
        a, b = values(engine, name), values(reference, name)
        span = float(np.abs(values(reference, scale_of.get(name, "logit_diff"))).max())
        bound = REDUCED_RTOL * span if reduced else FLOAT32_ATOL
        out[name] = {"max_abs_diff": float(np.abs(a - b).max()), "bound": bound}
    return out


def scale_reference(rows: dict, n_heads: int, n_timed: int, flops: int, n_tokens: int) -> dict:
    """The reference's time for all heads from its time on n_timed heads: the clean pass plus
    the per-head time (each head is one full pass) times n_heads."""
    ref, clean = rows[REFERENCE], rows[REFERENCE_CLEAN]
    scaled = {
        key: clean[key] + (ref[key] - clean[key]) * n_heads / n_timed
        for key in ("seconds", "cpu_seconds")
    }
    row = timing_row(
        f"full forward per head (reference, {n_timed} of {n_heads} heads timed)",
        scaled["seconds"],
        scaled["cpu_seconds"],
        flops,
        n_tokens,
    )
    row["peak_memory_bytes"] = ref["peak_memory_bytes"]
    row["peak_live_tensor_bytes"] = ref["peak_live_tensor_bytes"]
    row["timed_heads"] = n_timed
    row["derived"] = True  # from the difference of two timed runs: on a busy machine it can be < 0
    return row


def run(args) -> dict:
    device = resolve_device(args.device)
    dtype = resolve_dtype(args.dtype, device)
    on_cpu = device == "cpu"
    if args.threads:
        torch.set_num_threads(args.threads)
    load_before = os.getloadavg()
    model = load(args.model, device, dtype)
    cfg = model.cfg
    shapes = Shapes.of(cfg)
    tokens = random_tokens(model, args.rows, args.seq_len, args.seed)
    n_tokens = args.rows * (args.seq_len - 1)  # predicted tokens
    every_head = spread_heads(cfg.n_layers, cfg.n_heads, 0)
    ref_heads = spread_heads(cfg.n_layers, cfg.n_heads, args.reference_heads)
    print(
        f"{args.model}: {cfg.n_layers} layers x {cfg.n_heads} heads, d_model {cfg.d_model}, "
        f"d_vocab {cfg.d_vocab}; {args.rows} rows x {args.seq_len} tokens; {device} "
        f"{args.dtype}, {torch.get_num_threads()} threads; load average {load_before[0]:.2f}",
        flush=True,
    )

    engine_kw = dict(batch_size=args.batch_size, heads_per_pass=args.heads_per_pass)
    warm = tokens[:2, : min(args.seq_len, 16)]  # first calls allocate and pick kernels
    measure_heads(model, warm, args.ablation, [(0, 0)], **engine_kw)
    full_forward_measure_heads(model, warm, args.ablation, [(0, 0)])

    per_row_engine = engine_flops(
        shapes, args.seq_len - 1, {lay: cfg.n_heads for lay in range(cfg.n_layers)}
    )
    e_flops = per_row_engine * args.rows
    r_flops = reference_flops(shapes, args.seq_len, len(every_head)) * args.rows
    jobs = {
        ENGINE: (lambda: measure_heads(model, tokens, args.ablation, **engine_kw), e_flops),
    }
    if args.attribution:
        # Any 2% of each head's tokens costs the same as its real top tokens.
        top = (
            np.random.default_rng(args.seed).random(
                (cfg.n_layers, cfg.n_heads, args.rows, args.seq_len - 1)
            )
            < 0.02
        )
        jobs[ENGINE_ATTRIBUTION] = (
            lambda: measure_heads(
                model, tokens, args.ablation, sums=RepairSums(model, top), **engine_kw
            ),
            e_flops,
        )
    if args.tl_blocks:
        jobs[ENGINE_TL] = (
            lambda: measure_heads(model, tokens, args.ablation, fused=False, **engine_kw),
            e_flops,
        )
    if args.atp:
        jobs.update(atp_jobs(model, tokens, args, shapes))
    jobs[REFERENCE] = (
        lambda: full_forward_measure_heads(model, tokens, args.ablation, ref_heads),
        reference_flops(shapes, args.seq_len, len(ref_heads)) * args.rows,
    )
    if len(ref_heads) < len(every_head):
        jobs[REFERENCE_CLEAN] = (
            lambda: full_forward_measure_heads(model, tokens, args.ablation, []),
            forward_flops(shapes, args.seq_len) * args.rows,
        )
    print(f"timing, best of {args.repeats}:", flush=True)
    timings, results, rates = best_of(
        jobs,
        args.repeats,
        device,
        n_tokens,
        lambda: peak_matmul_rate(device, dtype, args.peak_sizes),
        args.live_tensors,
    )
    rows = [timings[ENGINE]] + ([timings[ENGINE_TL]] if args.tl_blocks else [])
    if args.attribution:
        rows.insert(1, timings[ENGINE_ATTRIBUTION])
    atp = atp_report(timings, results, model, tokens, args) if args.atp else None
    rows += atp["rows"] if atp else []
    if len(ref_heads) < len(every_head):
        rows.append(scale_reference(timings, len(every_head), len(ref_heads), r_flops, n_tokens))
    else:
        rows.append(timings[REFERENCE])
    engine_row, ref_row = rows[0], rows[-1]

    # Against the best rate seen in the run, so a busy moment during one measurement of the
    # peak does not flatter the methods.
    peak = max(v for r in rates for v in r["wall"].values())
    peak_cpu = max(v for r in rates for v in r["cpu"].values())
    for r in rows:
        r["fraction_of_peak"] = r["flop_per_s"] / peak
        r["fraction_of_peak_cpu_time"] = r["flop_per_cpu_s"] / peak_cpu if on_cpu else None
    check = compare(results[ENGINE], results[REFERENCE], ref_heads, dtype != torch.float32)
    report = {
        "command": "python " + " ".join(["benchmarks/benchmark.py", *args.argv]),
        "model": args.model,
        "shapes": shapes.__dict__,
        "rows": args.rows,
        "seq_len": args.seq_len,
        "predicted_tokens": n_tokens,
        "ablation": args.ablation,
        "heads": len(every_head),
        "device": device,
        "device_name": torch.cuda.get_device_name() if not on_cpu else cpu_name(),
        "dtype": args.dtype,
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "load_average_before": load_before,
        "load_average_after": os.getloadavg(),
        "peak_matmul": rates,
        "repeats": args.repeats,
        "peak_flop_per_s": peak,
        "peak_flop_per_cpu_s": peak_cpu if on_cpu else None,
        "methods": rows,
        "speedup": ref_row["seconds"] / engine_row["seconds"],
        "speedup_cpu_time": ref_row["cpu_seconds"] / engine_row["cpu_seconds"] if on_cpu else None,
        "attribution_overhead": (
            timings[ENGINE_ATTRIBUTION]["seconds"] / timings[ENGINE]["seconds"] - 1
            if args.attribution
            else None
        ),
        "flops_engine": e_flops,
        "flops_reference": r_flops,
        "flops_avoided": r_flops - e_flops,
        "flop_ratio": r_flops / e_flops,
        "agreement": check,
        "agreement_heads": len(ref_heads),
        "atp": {k: v for k, v in atp.items() if k != "rows"} if atp else None,
        "passed": all(v["max_abs_diff"] <= v["bound"] for v in check.values())
        and (atp is None or atp["agreement"]["max_abs_diff"] <= atp["agreement"]["bound"]),
    }
    print_report(report)
    return report


def token_mask(cfg, n_rows: int, n_pos: int, per_row: int) -> np.ndarray:
    """Every head asks the same `per_row` positions of every row, spread over the row: one
    per-token backward pass per position (engine.atp.token_groups)."""
    top = np.zeros((cfg.n_layers, cfg.n_heads, n_rows, n_pos), bool)
    top[..., np.unique(np.linspace(0, n_pos - 1, per_row).round().astype(int))] = True
    return top


def atp_jobs(model, tokens, args, shapes: Shapes) -> dict:
    """AtP's row estimates, with GradDrop; on each head's top 2% (any 2% of its tokens costs
    the same as its real top tokens), with GradDrop unless --no-atp-top-graddrop; and per token
    on args.atp_tokens tokens per row (none when 0)."""
    n_pos, k = args.seq_len - 1, args.atp_tokens
    rng = np.random.default_rng(args.seed)
    top = rng.random((shapes.n_layers, shapes.n_heads, args.rows, n_pos)) < 0.02
    row, drop, units, unit_drop, group = atp_counts(shapes, n_pos, args.rows)

    def run(**kw):
        return lambda: measure_atp(model, tokens, args.ablation, batch_size=args.batch_size, **kw)

    jobs = {
        ATP_ROWS: (run(graddrop=False), row),
        ATP_GRADDROP: (run(), row + drop),
        ATP_TOP: (run(top=top, graddrop=False), row + units),
    }
    if args.atp_top_graddrop:
        jobs[ATP_GD_TOP] = (run(top=top), row + drop + units + unit_drop)
    if args.atp_top_graddrop and args.atp_kinds > 1:  # the workflow's atp job: passes shared
        kinds = [args.ablation, *(a for a in TEXT_KINDS if a != args.ablation)][: args.atp_kinds]
        jobs[ATP_GD_TOP_KINDS.format(n=args.atp_kinds)] = (
            lambda: measure_atp_kinds(model, tokens, kinds, top=top, batch_size=args.batch_size),
            row + drop + units + unit_drop,  # + each kind's grad . dz: not matmul FLOPs
        )
    if k:
        per_token = token_mask(model.cfg, args.rows, n_pos, k)
        jobs[ATP_TOKENS.format(k=k)] = (run(per_token=per_token, graddrop=False), row + k * group)
        jobs[ATP_GD_TOKENS.format(k=k)] = (
            run(per_token=per_token),
            row + drop + k * (group + drop),
        )
    return jobs


def atp_counts(shapes: Shapes, n_pos: int, rows: int) -> tuple[int, int, int, int, int]:
    """FLOPs of `rows` rows: AtP's rows (forward + backward), GradDrop's L - 1 more backward
    passes, the head units on the top tokens, their GradDrop, one per-token backward pass."""
    return tuple(
        count * rows
        for count in (
            atp_flops(shapes, n_pos),
            graddrop_flops(shapes, n_pos),
            head_unit_flops(shapes, n_pos),
            head_unit_flops(shapes, n_pos, graddrop=True),
            backward_flops(shapes, n_pos),
        )
    )


def derived_row(
    name: str, base: dict, extra: dict, scale: float, flops: int, n_tokens: int, keep_base=True
):
    """A method timed as base + scale x (extra - base) (e.g. per token on every position from
    a few; without keep_base, only the difference), with its FLOPs counted."""
    seconds, cpu = (
        keep_base * base[k] + scale * (extra[k] - base[k]) for k in ("seconds", "cpu_seconds")
    )
    row = timing_row(name, seconds, cpu, flops, n_tokens)
    row["peak_memory_bytes"] = extra["peak_memory_bytes"]
    row["peak_live_tensor_bytes"] = extra["peak_live_tensor_bytes"]
    row["derived"] = True  # from two timed runs: on a busy machine a difference can be < 0
    return row


def atp_report(timings: dict, results: dict, model, tokens, args) -> dict:
    """AtP's rows of the table (measured, GradDrop alone, and per token scaled to every
    token), the exact engine's time and FLOPs over each method's, and AtP against the
    reference."""
    k, n_pos, n_tokens = args.atp_tokens, args.seq_len - 1, args.rows * (args.seq_len - 1)
    rows_job, gd_job, top_job = timings[ATP_ROWS], timings[ATP_GRADDROP], timings[ATP_TOP]
    drop = gd_job["flops"] - rows_job["flops"]
    rows = [
        rows_job,
        gd_job,
        derived_row(GRADDROP, rows_job, gd_job, 1.0, drop, n_tokens, False),
        top_job,
    ]
    if args.atp_top_graddrop:
        rows.append(timings[ATP_GD_TOP])
    shared = timings.get(ATP_GD_TOP_KINDS.format(n=args.atp_kinds))
    if shared:
        rows.append(shared)
    if k:
        rows += token_rows(timings, k, n_pos, n_tokens)
    ref = reference_atp(model, tokens, args.ablation)["row"]
    got = results[ATP_ROWS].atp_row.values
    bound = (REDUCED_RTOL if args.dtype != "float32" else ATP_RTOL) * float(np.abs(ref).max())
    engine = timings[ENGINE]
    unit_drop = atp_counts(Shapes.of(model.cfg), n_pos, args.rows)[3]
    top_gd_flops = top_job["flops"] + drop + unit_drop
    every = next((r for r in rows if r["method"].startswith("AtP per token:")), None)
    return {
        "rows": rows,
        "token_groups": k,
        "engine_over_atp": engine["seconds"] / rows_job["seconds"],
        "engine_over_atp_flops": engine["flops"] / rows_job["flops"],
        "engine_over_atp_graddrop": engine["seconds"] / gd_job["seconds"],
        "engine_over_atp_graddrop_flops": engine["flops"] / gd_job["flops"],
        "top_over_engine": top_job["seconds"] / engine["seconds"],
        "top_over_engine_flops": top_job["flops"] / engine["flops"],
        "top_graddrop_over_engine": (
            timings[ATP_GD_TOP]["seconds"] / engine["seconds"] if args.atp_top_graddrop else None
        ),
        "top_graddrop_over_engine_flops": top_gd_flops / engine["flops"],
        # per kind when the job measures several (the workflow's atp job), each against the
        # exact engine's one kind
        "kinds": args.atp_kinds if shared else 1,
        "top_graddrop_per_kind_over_engine": (
            shared["seconds"] / args.atp_kinds / engine["seconds"] if shared else None
        ),
        "top_graddrop_per_kind_over_engine_flops": (
            top_gd_flops / args.atp_kinds / engine["flops"] if shared else None
        ),
        "every_token_over_engine": every["seconds"] / engine["seconds"] if every else None,
        "agreement": {"max_abs_diff": float(np.abs(got - ref).max()), "bound": bound},
    }


def token_rows(timings: dict, k: int, n_pos: int, n_tokens: int) -> list[dict]:
    """The per-token rows: measured on k tokens per row, and scaled to every token."""
    out = []
    for base, name in ((ATP_ROWS, ATP_TOKENS), (ATP_GRADDROP, ATP_GD_TOKENS)):
        base_job, job = timings[base], timings[name.format(k=k)]
        group = job["flops"] - base_job["flops"]
        label = name.format(k=k).split(",")[0]
        scaled = base_job["flops"] + group // k * n_pos
        every = derived_row(
            EVERY_TOKEN.format(name=label, k=k), base_job, job, n_pos / k, scaled, n_tokens
        )
        out += [job, every]
    return out


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "cpu"


def table(r: dict) -> str:
    """The methods as a Markdown table."""
    cpu = r["peak_flop_per_cpu_s"] is not None
    head = "| method | s / 1k tokens | GFLOP / token | GFLOP/s | % of peak |"
    head += " % of peak (CPU time) |" if cpu else ""
    head += " peak memory | peak live tensors |"
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for m in r["methods"]:
        line = (
            f"| {m['method']} | {m['seconds_per_1k_tokens']:.2f} | {m['gflop_per_token']:.2f} | "
            f"{m['flop_per_s'] / 1e9:.1f} | {m['fraction_of_peak']:.0%} |"
        )
        line += f" {m['fraction_of_peak_cpu_time']:.0%} |" if cpu else ""
        live = m["peak_live_tensor_bytes"]
        live = "" if live is None else f"{live / 2**20:.1f} MiB"
        lines.append(line + f" {m['peak_memory_bytes'] / 2**20:.0f} MiB | {live} |")
    return "\n".join(lines)


def print_report(r: dict) -> None:
    before = r["peak_matmul"][0]["wall"]
    sizes = ", ".join(f"{n}: {v / 1e9:.1f}" for n, v in before.items())
    print()
    print(
        f"{r['model']} | {r['rows']} rows x {r['seq_len']} tokens ({r['predicted_tokens']} "
        f"predicted) | {r['heads']} heads, {r['ablation']} | {r['device_name']}, {r['dtype']}, "
        f"{r['threads']} threads | load average {r['load_average_before'][0]:.2f} -> "
        f"{r['load_average_after'][0]:.2f}"
    )
    line = f"peak matmul: {r['peak_flop_per_s'] / 1e9:.1f} GFLOP/s"
    if r["peak_flop_per_cpu_s"] is not None:
        line += f" ({r['peak_flop_per_cpu_s'] / 1e9:.1f} GFLOP per CPU second)"
    print(line + f"; n x n at the start, GFLOP/s: {sizes}")
    print(table(r))
    line = f"engine vs reference: {r['speedup']:.2f}x faster"
    if r["speedup_cpu_time"] is not None:
        line += f" ({r['speedup_cpu_time']:.2f}x in CPU time)"
    print(
        line + f"; {r['flop_ratio']:.2f}x fewer FLOPs "
        f"({r['flops_avoided'] / r['predicted_tokens'] / 1e9:.2f} GFLOP/token avoided)"
    )
    if r["atp"] is not None:
        a = r["atp"]
        print(atp_summary_line(a))
    if r["attribution_overhead"] is not None:
        print(f"who repairs whom adds {r['attribution_overhead']:.0%} to the engine's time")
    print(
        f"agreement on {r['agreement_heads']} heads, largest |engine - reference|: "
        + ", ".join(
            f"{k} {v['max_abs_diff']:.1e} (bound {v['bound']:.0e})"
            for k, v in r["agreement"].items()
        )
        + f": {'OK' if r['passed'] else 'FAILED'}"
    )


def atp_summary_line(a: dict) -> str:
    """The exact engine against AtP and GradDrop, in FLOPs (counted) and time (measured)."""
    top_gd = f"{a['top_graddrop_over_engine_flops']:.2f}x its FLOPs"
    if a["top_graddrop_over_engine"] is not None:
        top_gd += f", {a['top_graddrop_over_engine']:.2f}x its time"
    line = (
        f"exact per-head effects at {a['engine_over_atp_flops']:.1f}x the FLOPs of AtP "
        f"({a['engine_over_atp']:.1f}x its time), {a['engine_over_atp_graddrop_flops']:.1f}x "
        f"those of AtP + GradDrop ({a['engine_over_atp_graddrop']:.1f}x its time); on each "
        f"head's top 2% AtP takes {a['top_over_engine_flops']:.2f}x the exact engine's FLOPs "
        f"({a['top_over_engine']:.2f}x its time), with GradDrop {top_gd}"
    )
    if a.get("top_graddrop_per_kind_over_engine") is not None:
        line += (
            f"; {a['kinds']} kinds sharing one job: per kind "
            f"{a['top_graddrop_per_kind_over_engine_flops']:.2f}x the exact engine's FLOPs "
            f"({a['top_graddrop_per_kind_over_engine']:.2f}x its time)"
        )
    if a["every_token_over_engine"] is not None:
        line += f"; per-token AtP on every token {a['every_token_over_engine']:.2f}x its time"
    return line + (
        f"; AtP vs reference: {a['agreement']['max_abs_diff']:.1e} "
        f"(bound {a['agreement']['bound']:.0e})"
    )


def parse(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument(
        "--model",
        default="gpt2-small-random",
        help="gpt2-small-random | tiny-random-<gpt2|pythia|llama> | demo:<HF checkpoint dir> | "
        "<TransformerLens name> (from the hub)",
    )
    p.add_argument("--rows", type=int, default=8)
    p.add_argument("--seq-len", type=int, default=128, help="tokens per row, BOS included")
    p.add_argument("--ablation", default="resample", choices=("resample", "mean", "zero"))
    p.add_argument("--device", default="auto")
    p.add_argument("--dtype", default="float32", choices=("float32", "bfloat16", "float16"))
    p.add_argument("--batch-size", type=int, default=None, help="engine rows per pass")
    p.add_argument("--heads-per-pass", type=int, default=None, help="engine heads per pass")
    p.add_argument(
        "--reference-heads",
        type=int,
        default=0,
        help="time the reference on this many heads spread over the model and scale its time "
        "to all heads (each head is one full pass); 0: all heads",
    )
    p.add_argument(
        "--no-tl-blocks",
        dest="tl_blocks",
        action="store_false",
        help="skip timing the engine with TransformerLens' own blocks",
    )
    p.add_argument(
        "--no-attribution",
        dest="attribution",
        action="store_false",
        help="skip timing the engine with who-repairs-whom (engine.attribution)",
    )
    p.add_argument(
        "--no-atp",
        dest="atp",
        action="store_false",
        help="skip timing attribution patching (AtP, GradDrop; engine.atp)",
    )
    p.add_argument(
        "--atp-tokens",
        type=int,
        default=2,
        help="tokens per row of the per-token AtP timings (scaled to every token); 0: none",
    )
    p.add_argument(
        "--no-atp-top-graddrop",
        dest="atp_top_graddrop",
        action="store_false",
        help="skip timing GradDrop on each head's top tokens (its FLOPs are still counted): "
        "some 3.6x the exact engine's on gpt2-small shapes",
    )
    p.add_argument(
        "--no-live-tensors",
        dest="live_tensors",
        action="store_false",
        help="skip the untimed run of each method that measures its peak live tensor bytes "
        "(selfrepair/live_tensors.py)",
    )
    p.add_argument(
        "--atp-kinds",
        type=int,
        default=3,
        choices=(1, 2, 3),
        help="ablation kinds one atp job measures (the workflow's: its 3 ablations), --ablation "
        "first: AtP + GradDrop on the top tokens timed with them sharing every pass, and its "
        "cost per kind printed against the exact engine's; 1: not timed",
    )
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    p.add_argument(
        "--peak-sizes",
        type=lambda s: [int(n) for n in s.split(",")],
        default=[],
        help="n of the n x n matmuls that measure the peak, comma separated "
        "(default 1024,2048,3072 on CPU, 2048,4096,8192 on CUDA)",
    )
    p.add_argument(
        "--repeats",
        type=int,
        default=1,
        help="time every method this many times, round robin, and keep the fastest",
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=None, help="write the report as JSON here")
    args = p.parse_args(argv)
    args.argv = argv
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse(sys.argv[1:] if argv is None else argv)
    report = run(args)
    if args.out:
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = out.with_suffix(out.suffix + ".tmp")
        tmp.write_text(json.dumps(report, indent=2, default=float) + "\n")
        tmp.replace(out)
    if not report["passed"]:
        print("the engine and the reference disagree beyond the bound", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
