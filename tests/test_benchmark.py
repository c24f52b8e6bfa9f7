"""The benchmark CLI end to end on a tiny model (no timing thresholds: speed is not tested)."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "benchmark.py"


def load_script():
    spec = importlib.util.spec_from_file_location("benchmark", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def run_cli(tmp_path: Path, args: str) -> tuple[subprocess.CompletedProcess, dict]:
    """The benchmark run with these arguments, and its JSON report."""
    out = tmp_path / "bench.json"
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), *args.split(), "--out", str(out)],
        capture_output=True,
        text=True,
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    return proc, json.loads(out.read_text())


def test_cli_runs_and_writes_every_field(tmp_path):
    proc, r = run_cli(
        tmp_path,
        "--model tiny-random-pythia --rows 3 --seq-len 10 --peak-sizes 128 --reference-heads 5",
    )
    assert "engine vs reference" in proc.stdout and "| engine (fused blocks) |" in proc.stdout
    assert r["passed"] and r["heads"] == 12 and r["agreement_heads"] == 5
    names = [m["method"] for m in r["methods"]]
    assert names[:2] == ["engine (fused blocks)", "engine + who repairs whom"] and len(names) == 14
    atp = [n for n in names if "AtP" in n or "GradDrop" in n]
    assert (
        atp[:3]
        == [
            "AtP, every head (1 forward + 1 backward pass)",
            "AtP + GradDrop (L - 1 more backward passes)",
            "GradDrop alone",
        ]
        and len(atp) == 10
    )
    assert "AtP + GradDrop on each head's top 2%, 3 kinds in one job" in atp
    a = r["atp"]
    assert a["engine_over_atp"] > 0 and a["engine_over_atp_flops"] > 1 and a["token_groups"] == 2
    assert a["engine_over_atp_graddrop_flops"] < a["engine_over_atp_flops"]
    assert a["top_graddrop_over_engine_flops"] > a["top_over_engine_flops"] > 0
    # Derived from a difference of two timings: on a busy machine it can come out below 0.
    assert a["top_graddrop_over_engine"] > 0 and a["every_token_over_engine"] is not None
    assert a["agreement"]["max_abs_diff"] <= a["agreement"]["bound"]
    assert "exact per-head effects at" in proc.stdout
    # the workflow's atp job: 3 kinds share every pass, so each costs a third of the FLOPs
    assert a["kinds"] == 3 and a["top_graddrop_per_kind_over_engine"] > 0
    assert a["top_graddrop_per_kind_over_engine_flops"] == pytest.approx(
        a["top_graddrop_over_engine_flops"] / 3
    )
    assert "3 kinds sharing one job: per kind" in proc.stdout
    seconds = {m["method"]: m["seconds"] for m in r["methods"]}
    assert seconds["GradDrop alone"] == pytest.approx(seconds[atp[1]] - seconds[atp[0]])
    assert "who repairs whom adds" in proc.stdout and r["attribution_overhead"] > -1
    for m in r["methods"]:
        for key in ("seconds", "cpu_seconds", "seconds_per_1k_tokens", "flop_per_s"):
            assert m[key] > 0 or m.get("derived"), key
        assert (0 < m["fraction_of_peak"] or m.get("derived")) and m["peak_memory_bytes"] >= 0
    assert r["methods"][-1]["timed_heads"] == 5  # reference time scaled from 5 heads to 12
    assert r["flops_reference"] > r["flops_engine"] > 0
    assert r["flops_avoided"] == r["flops_reference"] - r["flops_engine"]
    assert set(r["agreement"]) >= {"logit_diff", "self_repair", "sr_ln", "ln_scale_ablated"}
    assert r["peak_flop_per_s"] > 0 and r["load_average_before"]


def test_atp_timings_can_leave_out_the_costly_ones(tmp_path):
    """--atp-tokens 0 and --no-atp-top-graddrop time AtP's rows, GradDrop and the top-token
    units only; GradDrop on the top tokens is still counted in FLOPs."""
    proc, r = run_cli(
        tmp_path,
        "--model tiny-random-gpt2 --rows 2 --seq-len 8 --peak-sizes 64 --reference-heads 2"
        " --no-tl-blocks --no-attribution --atp-tokens 0 --no-atp-top-graddrop",
    )
    atp = [m["method"] for m in r["methods"] if "AtP" in m["method"] or "GradDrop" in m["method"]]
    assert atp[3:] == ["AtP on each head's top 2% (1 backward pass per head)"]
    a = r["atp"]
    assert a["top_graddrop_over_engine"] is None and a["every_token_over_engine"] is None
    assert a["kinds"] == 1 and a["top_graddrop_per_kind_over_engine_flops"] is None
    assert a["top_graddrop_over_engine_flops"] > a["top_over_engine_flops"] > 0
    assert "with GradDrop" in proc.stdout and "per-token AtP" not in proc.stdout


def test_disagreement_is_reported():
    bench = load_script()
    import xarray as xr

    dims = ("layer", "head", "batch", "pos")
    ref = xr.Dataset(
        {n: (dims, np.zeros((1, 2, 2, 3), np.float32)) for n in bench.HEAD_VARIABLES}
        | {
            n: (("batch", "pos"), np.ones((2, 3), np.float32))
            for n in ("logit_clean", "ln_scale_clean")
        }
    )
    eng = ref.copy(deep=True)
    assert all(v["max_abs_diff"] == 0 for v in bench.compare(eng, ref, [(0, 1)], False).values())
    eng["sr_ln"][0, 1, 1, 2] = 0.01  # on a compared head
    eng["sr_mlps"][0, 0, 0, 0] = 5.0  # on a head the reference did not run: ignored
    check = bench.compare(eng, ref, [(0, 1)], False)
    assert check["sr_ln"]["max_abs_diff"] > check["sr_ln"]["bound"]
    assert check["sr_mlps"]["max_abs_diff"] == 0
