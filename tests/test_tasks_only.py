"""models[].tasks_only: a model measured on its tasks only (the demo's induction-pythia, which
learns induction where the text models do not; docs/demo.md, Induction). Its keys are checked
before any job, and the demo plans its training and task jobs and nothing of the text path, whose
jobs stay those of the demo without it."""

from __future__ import annotations

import re

import pytest
import yaml
from helpers import dry_run, load, merged

import selfrepair.config as sr_config

MODEL = "induction-pythia"


def demo_with(train: dict | None = None, **keys) -> dict:
    """config.yaml + demo.yaml, the demo's induction-pythia entry with these train keys and
    model keys (None: dropped)."""
    config = merged(load("config.yaml"), load("demo.yaml"))
    entry = next(e for e in config["models"] if e["name"] == MODEL)
    entry["train"] = {**entry["train"], **(train or {})}
    for key, value in keys.items():
        entry.pop(key) if value is None else entry.update({key: value})
    return config


def test_the_demo_induction_model_is_tasks_only_and_checked():
    """The demo validates; a tasks_only model no task measures, one with checkpoints, a context
    shorter than the text rows without tasks_only, tie_embeddings on GPT-2: each stops the run
    in one line naming the key and the fix."""
    entries = sr_config.validate_run(demo_with())
    assert entries[MODEL]["tasks_only"] and list(sr_config.text_models(entries)) == [
        "tiny-gpt2",
        "tiny-pythia",
    ]
    no_task = demo_with()
    no_task["tasks"]["induction"]["models"] = ["tiny-gpt2", "tiny-pythia"]
    bad = {
        "tasks_only: no task measures it; add it to a task's models": no_task,
        "train.keep_steps: checkpoints are measured on text": demo_with(train={"keep_steps": [0]}),
        "train.n_ctx: 64 is shorter than the text rows (data.seq_len 128); raise it, or set "
        "tasks_only: true": demo_with(tasks_only=None),
        "train.tie_embeddings: gpt2 models are always tied": demo_with(train={"arch": "gpt2"}),
    }
    for message, config in bad.items():
        with pytest.raises(sr_config.ConfigError, match=rf"models\[{MODEL}\]") as info:
            sr_config.validate_run(config)
        assert message in str(info.value)


def planned_outputs(*configs) -> set[str]:
    """Every output a dry run (--forceall) of the demo with these extra config files plans."""
    stdout = dry_run("config/demo.yaml", *map(str, configs))
    lines = [line for line in stdout.splitlines() if line.strip().startswith("output:")]
    return {f.strip() for line in lines for f in line.split(":", 1)[1].split(",")}


def test_the_demo_plans_the_induction_model_on_its_task_only(tmp_path):
    """The demo trains induction-pythia and runs the induction task on it alone (the text
    models do not copy: tasks.induction.models), with the method table of its run-time set
    (ablation_sets.strongest: {induction_score_top: k}), and nothing of the text path (no
    tokens, shards, figures, explorer page); every other output is the demo's without it (the
    overlay lists only the text models, and the task on them, whose task jobs it adds)."""
    with_it = planned_outputs()
    overlay = tmp_path / "without.yaml"
    text = [e for e in load("demo.yaml")["models"] if not e.get("tasks_only")]
    names = [e["name"] for e in text]
    overlay.write_text(yaml.safe_dump({"models": text, "tasks": {"induction": {"models": names}}}))
    without = planned_outputs(overlay)
    own = {p for p in with_it if MODEL in p}
    text_task = {p for p in without if "tasks/induction" in p and "explorer/index" not in p}
    assert text_task and all(any(name in p for name in names) for p in text_task)
    assert with_it - own == without - text_task
    task = f"results/{MODEL}/tasks/induction/"
    expected = {f"resources/models/{MODEL}", f"results/{MODEL}/training.json"}
    expected |= {f"resources/weights/{MODEL}", f"{task}metric.json"}
    expected |= {f"{task}methods/strongest.zarr", f"{task}sets/corrupted.zarr"}
    expected |= {f"{task}tables/methods-strongest.{x}" for x in ("csv", "html")}
    expected |= {f"{task}figures/methods-strongest.{x}" for x in ("png", "pdf")}
    assert expected <= own
    assert {f"results/explorer/tasks/induction/{MODEL}.html"} == {p for p in own if "explorer" in p}
    others = own - expected - {p for p in own if p.startswith(task) or "explorer" in p}
    assert not others, sorted(others)
    # no running-text shard or tokens (a task's own stores are its one shard, under task)
    assert not any(re.search(r"shard-\d+|tokens\.zarr", p) for p in own if task not in p)
