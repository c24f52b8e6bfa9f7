"""The `tasks` section is checked before any job: the schema and the config checks at parse time
(snakemake -n stops in one line naming the key or file:line), the tokenizers' prompts when the
workflow starts (check_task_prompts), the task job itself for a tokenizer trained in the run."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import yaml
from helpers import ROOT, SCHEMA, load, load_test, merged
from helpers import dry_run as planned_jobs
from tasks_helpers import gpt2_checkpoint, ioi_tokenizer

from selfrepair.config import ConfigError, validate_run
from selfrepair.config.tasks import check_task_prompts

PAPER_CI = ROOT / ".test" / "config" / "paper-ci.yaml"


def dry_run(tmp_path, tasks: dict, **keys) -> str:
    """snakemake -n of the paper's CI config with these tasks (and other top-level keys): its
    output (it must fail)."""
    overlay = tmp_path / "tasks.yaml"
    overlay.write_text(yaml.safe_dump({"tasks": tasks, **keys}))
    proc = subprocess.run(
        [sys.executable, "-m", "snakemake", "-n", "--cores", "1", "--configfile", str(PAPER_CI),
         str(overlay)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )  # fmt: skip
    assert proc.returncode != 0
    assert "rule " not in proc.stdout  # no job was planned to run
    return proc.stdout + proc.stderr


def _jsonl(tmp_path, lines) -> str:
    path = tmp_path / "mine.jsonl"
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))
    return str(path)


def test_snakemake_stops_on_an_unknown_task_type(tmp_path):
    out = dry_run(tmp_path, {"sentiment": {"type": "sst2"}})
    assert "config key tasks.sentiment.type: 'sst2' is not one of" in out


def test_snakemake_stops_on_a_prompt_line_without_an_answer(tmp_path):
    path = _jsonl(tmp_path, [{"prompt": "a", "answer": " b"}, {"prompt": "c"}])
    out = dry_run(tmp_path, {"mine": {"type": "prompts", "file": path, "ablations": ["zero"]}})
    assert f"config key tasks.mine.file: {path}: 1 of 2 prompts cannot be used" in out
    assert f'  {path}:2: no "answer"' in out


@pytest.mark.parametrize(
    ("sets", "message"),
    [
        (
            {"movers": [[9, 9], [12, 0]]},
            "config key ablation_sets.movers: pythia-160m has no L12H0 (12 layers x 12 heads); "
            "name heads of every model of the run, or drop the set",
        ),
        ({"twice": [[1, 2], [1, 2]]}, "config key ablation_sets.twice: a head is listed twice"),
        ({"empty": []}, "config key ablation_sets.empty"),
    ],
)
def test_snakemake_stops_on_bad_running_text_sets(tmp_path, sets, message):
    """Top-level ablation_sets (running text): a head beyond a model, a head twice, an empty
    set, each one line naming the key, before any job."""
    out = dry_run(tmp_path, {}, ablation_sets=sets)
    assert message in out


def test_a_frozen_first_task_ablation_with_sets_names_the_fix(tmp_path):
    spec = {"type": "ioi", "ablations": ["corrupted-frozen-ln"], "ablation_sets": {"s": [[1, 1]]}}
    out = dry_run(tmp_path, {"ioi": spec})
    assert "config key tasks.ioi.ablations: the first (corrupted-frozen-ln) is the backup" in out
    assert "put a kind without -frozen-ln first" in out


def test_snakemake_stops_on_logit_diff_without_counterfactuals(tmp_path):
    out = dry_run(tmp_path, {"ind": {"type": "induction", "metric": "logit_diff"}})
    assert "config key tasks.ind.metric: logit_diff needs a counterfactual" in out


def _config(tasks: dict) -> dict:
    """config.yaml with paper-ci.yaml merged in, as Snakemake merges them, and these tasks."""
    return merged(load("config.yaml"), load_test("paper-ci.yaml")) | {"tasks": tasks}


@pytest.mark.parametrize(
    ("tasks", "message"),
    [
        (
            {"t": {"type": "ioi", "models": ["gpt2-large"]}},
            "config key tasks.t.models: 'gpt2-large' is not among this run's models",
        ),
        (
            {"t": {"type": "ioi", "ablation_sets": {"nm": [[9, 9], [12, 0]]}}},
            "config key tasks.t.ablation_sets.nm: pythia-160m has no L12H0",
        ),
        (
            {"t": {"type": "ioi", "expected_backups": [[10, 10], [10, 10]]}},
            "config key tasks.t.expected_backups: a head is listed twice",
        ),
        ({"t": {"type": "prompts"}}, "config key tasks.t.file: a prompts task needs"),
        ({"t": {"type": "ioi", "file": "x.jsonl"}}, "only a prompts task reads a file"),
        (
            {"t": {"type": "ioi", "expected_backups": {"induction_score_above": 0.4}}},
            "config key tasks.t.expected_backups: induction_score_above needs an induction task",
        ),
        (
            {"t": {"type": "induction", "expected_backups": {"induction_score_above": 1.5}}},
            "config key tasks.t.expected_backups.induction_score_above: 1.5 is greater than",
        ),
        (
            {"t": {"type": "ioi", "ablation_sets": {"top": {"induction_score_top": 2}}}},
            "config key tasks.t.ablation_sets.top: induction_score_top needs an induction task",
        ),
        (
            {"t": {"type": "induction", "ablation_sets": {"top": {"induction_score_top": 145}}}},
            "config key tasks.t.ablation_sets.top.induction_score_top: 145 is more than "
            "pythia-160m's 144 heads",
        ),
        (
            {"t": {"type": "ioi", "ablation_sets": {"de": {"direct_effect_top": 145}}}},
            "config key tasks.t.ablation_sets.de.direct_effect_top: 145 is more than "
            "pythia-160m's 144 heads",
        ),
        (
            {
                "t": {
                    "type": "induction",
                    "ablation_sets": {"both": {"induction_score_top": 2, "direct_effect_top": 2}},
                }
            },
            "config key tasks.t.ablation_sets.both",
        ),
    ],
)
def test_bad_tasks_fail_at_parse_time_naming_the_key(tasks, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        validate_run(_config(tasks), SCHEMA)


def test_corrupted_ablation_needs_every_prompt_paired(tmp_path):
    path = _jsonl(
        tmp_path,
        [{"prompt": "a", "answer": " b", "corrupted": "c"}, {"prompt": "d", "answer": " e"}],
    )
    with pytest.raises(ConfigError, match="config key tasks.t.ablations: corrupted needs"):
        validate_run(_config({"t": {"type": "prompts", "file": path}}), SCHEMA)
    config = _config({"t": {"type": "prompts", "file": path, "ablations": ["mean"]}})
    assert validate_run(config, SCHEMA)
    # template-mean reads the corrupted prompts too (Wang et al.'s mean over them); CoAx's zero not
    spec = {"type": "prompts", "file": path, "ablations": ["mean", "template-mean-frozen-ln"]}
    with pytest.raises(ConfigError, match="ablations: template-mean-frozen-ln needs a corrupted"):
        validate_run(_config({"t": spec}), SCHEMA)
    spec["ablations"] = ["zero-with-value-bias"]
    assert validate_run(_config({"t": spec}), SCHEMA)


def _path_run(tmp_path, tasks: dict) -> tuple[dict, dict]:
    ckpt = gpt2_checkpoint(tmp_path / "ckpt", ioi_tokenizer())
    config = _config(tasks)
    config["models"] = [{"name": "m", "path": ckpt}]
    return config, {"m": {"name": "m", "path": ckpt}}


def test_prompts_are_checked_with_each_tokenizer_before_any_job(tmp_path):
    """An answer that is two tokens of the model's tokenizer, a corrupted prompt of another
    length, too few single-token names: one line naming the task, the model, file:line."""
    good = {
        "prompt": "Then, Mary and John went to the store. John gave a drink to",
        "answer": " Mary",
    }
    for line, message in [
        ({**good, "answer": " New York"}, r"mine.jsonl:2: answer ' New York' is \d tokens"),
        ({**good, "corrupted": "Then, Mary went"}, "mine.jsonl:2: the corrupted prompt is"),
    ]:
        path = _jsonl(tmp_path, [good, line])
        config, entries = _path_run(tmp_path, {"mine": {"type": "prompts", "file": path}})
        config["tasks"]["mine"].update(metric="correct_logit", ablations=["zero"])
        with pytest.raises(
            ConfigError, match=f"(?s)config key tasks.mine \\(m's tokenizer\\): .*{message}"
        ):
            check_task_prompts(config, entries)
    config, entries = _path_run(tmp_path, {"ioi": {"type": "ioi", "n_prompts": 4}})
    check_task_prompts(config, entries)  # the IOI tokenizer has the names
    few = gpt2_checkpoint(tmp_path / "few", ioi_tokenizer(vocab_size=300, n_names=3))
    with pytest.raises(ConfigError, match=r"tasks.ioi \(m's tokenizer\): .*IOI needs at least 5"):
        check_task_prompts(config, {"m": {"name": "m", "path": few}})
    # A run whose planned jobs serve no task (a resumed run of other targets) is not stopped
    # by a task it does not build; one that builds it is.
    check_task_prompts(config, {"m": {"name": "m", "path": few}}, tasks=set())
    with pytest.raises(ConfigError, match=r"tasks.ioi"):
        check_task_prompts(config, {"m": {"name": "m", "path": few}}, tasks={"ioi"})


def test_the_ioi_config_plans_the_task_beside_the_paper_path():
    """config/ioi.yaml (with its CI overlay) plans through snakemake -n: every task rule once
    (the overlay keeps one ablation), beside gpt2-small's paper path."""
    output = planned_jobs("config/ioi.yaml", ".test/config/ioi.yaml")
    jobs = dict(
        (line.split()[0], int(line.split()[1]))
        for line in output.splitlines()
        if len(line.split()) == 2 and line.split()[1].isdigit()
    )
    per_ablation = {"task_ablate", "task_set_ablate", "task_summary"}
    assert {job: jobs[job] for job in per_ablation} == dict.fromkeys(per_ablation, 1)
    once = {"task_prompts", "task_metric", "task_backups", "task_explorer", "task_repair_bars"}
    once |= {"task_self_repair_per_head", "task_de_vs_metric_drop", "task_repairer_heatmap"}
    once |= {"task_methods", "method_table"}  # one named set (name_movers)
    assert {job: jobs[job] for job in once} == dict.fromkeys(once, 1)
    # the paper path, as paper-ci's: its one shard, every ablation variant in one job
    assert jobs["ablate"] == 1 and jobs["fig01"] == 1
