"""Task sets picked at run time through the workflow (tasks.<task>.ablation_sets.<set>:
{induction_score_top: k} here, and the demo's own {direct_effect_top: 2}): on a copy of the
reduced demo, task_set_ablate and task_methods ablate the k heads with the largest induction
score of task_clean's metric.json, or the largest mean clean direct effect of its store (each
ranked here by hand), and the method table is made."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import yaml
from helpers import link_project, snakemake

from selfrepair.stages.store import open_zarr


@pytest.mark.slow
def test_the_induction_heads_set_is_picked_from_the_clean_scores(finished_run, tmp_path):
    run, configs = finished_run
    copy = link_project(tmp_path)
    timed = shutil.ignore_patterns("logs", "benchmarks")
    shutil.copytree(run / "results", copy / "results", ignore=timed)
    shutil.copytree(run / "resources", copy / "resources")
    overlay = tmp_path / "picked.yaml"
    task = {"ablation_sets": {"top": {"induction_score_top": 2}}}
    task["expected_backups"] = {"induction_score_above": 0.01}  # plumbing: models do not copy
    overlay.write_text(yaml.safe_dump({"tasks": {"induction": task}}, sort_keys=False))
    task_dir = "results/tiny-gpt2/tasks/induction"
    for made in ("sets", "methods"):  # a run with the demo's own set: made again, with "top"
        shutil.rmtree(copy / task_dir / made, ignore_errors=True)
    proc = snakemake(
        f"{task_dir}/tables/methods-top.csv", f"{task_dir}/sets/corrupted.zarr", "--cores", "1", "--rerun-triggers", "mtime",
        "--configfile", *configs, str(overlay), cwd=Path(copy), timeout=900,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    scores = json.loads((copy / task_dir / "metric.json").read_text())["induction_scores"]
    ranked = sorted(
        ((layer, head) for layer in range(len(scores)) for head in range(len(scores[0]))),
        key=lambda h: (-scores[h[0]][h[1]], h),
    )
    top = sorted([list(h) for h in ranked[:2]])
    assert open_zarr(copy / task_dir / "methods/top.zarr").attrs["members"] == top
    sets = open_zarr(copy / task_dir / "sets/corrupted.zarr")
    assert sets.attrs["sets"]["top"] == top
    # the demo's set (config/demo.yaml): the 2 largest mean clean direct effects on the answers
    de = open_zarr(copy / task_dir / "clean/shard-000.zarr")["de_head"].mean("token").values
    by_de = sorted(np.ndindex(de.shape), key=lambda h: (-de[h], h))
    assert sets.attrs["sets"]["strongest"] == sorted([list(h) for h in by_de[:2]])
