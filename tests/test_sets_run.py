"""Joint sets on running text through the workflow (config ablation_sets, rule set_ablate, the
task rule's stage): one shard's store of the reduced demo's copy is measure_sets on that shard's
rows, every token, the batch coordinate the global row."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from helpers import link_project, snakemake

from selfrepair.stages.store import open_zarr

SETS = {"pair": [[0, 1], [2, 3]], "late": [[3, 0]]}


@pytest.mark.slow
def test_a_running_text_set_store_is_measure_sets_on_its_shard(finished_run, tmp_path):
    from selfrepair.engine.sets import measure_sets
    from selfrepair.models.loading import load_local_checkpoint

    run, configs = finished_run
    copy = link_project(tmp_path)
    timed = shutil.ignore_patterns("logs", "benchmarks")
    shutil.copytree(run / "results", copy / "results", ignore=timed)
    shutil.copytree(run / "resources", copy / "resources")
    overlay = tmp_path / "sets.yaml"
    overlay.write_text(yaml.safe_dump({"ablation_sets": SETS}, sort_keys=False))
    target = "results/tiny-gpt2/sets/mean/shard-001.zarr"
    proc = snakemake(
        target, "--cores", "1", "--rerun-triggers", "mtime", "--configfile", *configs,
        str(overlay), cwd=Path(copy), timeout=600,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "rule set_ablate:" in proc.stderr + proc.stdout
    stored = open_zarr(copy / target).load()
    tokens = open_zarr(copy / "results/tiny-gpt2/tokens.zarr").tokens.values
    start = int(stored.batch.values[0])
    rows = torch.from_numpy(tokens[start : start + stored.sizes["batch"]].astype(np.int64))
    model = load_local_checkpoint(str(copy / "resources" / "models" / "tiny-gpt2"))
    want = measure_sets(model, rows, "mean", {k: [tuple(h) for h in v] for k, v in SETS.items()})
    assert start == 32 and list(stored.set.values) == list(SETS)  # shard 1 of 32-row shards
    assert stored.sizes["pos"] == rows.shape[1] - 1 and stored.attrs["ablation"] == "mean"
    for name in ("logit_diff", "self_repair", "sr_heads", "sr_ln", "de_clean", "dde"):
        np.testing.assert_allclose(stored[name].values, want[name].values, atol=1e-5)
    assert float(np.abs(stored.logit_diff).max()) > 0
