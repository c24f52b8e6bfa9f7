"""What the command line gives a run (issue 36, defect 5): the named targets (tasks, figures,
tables, explorer) plan their outputs and no others, `--config` dictionaries keep their booleans
and numbers, the storage table says why a size is unknown, and the run names the substitutes
only of the figures it builds."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest
from helpers import REDUCED_DEMO_CONFIGS, ROOT, link_project, load_file, merged, snakemake

import selfrepair.config as sr_config
from selfrepair.config.cli import named_target_of, typed_value, yaml_scalar
from selfrepair.config.storage_check import shown_total


def planned_rules(*args: str) -> set[str]:
    """The rules a dry run of the reduced demo plans from scratch, with args before
    --configfile (which takes every word after it)."""
    proc = snakemake(
        *args, "-n", "--forceall", "--cores", "1", "--quiet", "rules",
        "--configfile", *REDUCED_DEMO_CONFIGS, cwd=ROOT, timeout=600,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    table = (proc.stdout + proc.stderr).split("Job stats:")[1].split("total")[0]
    return {m.group(1) for m in re.finditer(r"^(\w+)\s+\d+$", table, re.MULTILINE)}


def test_named_targets_plan_their_outputs_and_no_others():
    everything = planned_rules()
    figures = planned_rules("figures")
    assert {"fig01", "fig05", "fig08", "training_self_repair", "task_repair_bars"} <= figures
    assert not figures & {"head_table", "head_explorer", "task_explorer", "task_backups"}
    tables = planned_rules("tables")
    assert {"head_table", "task_backups", "atp_table", "repair_graph"} <= tables
    assert not tables & {"fig01", "head_explorer", "task_explorer"}
    explorer = planned_rules("explorer")
    assert {"head_explorer", "explorer_index", "task_explorer"} <= explorer
    assert not explorer & {"fig01", "head_table", "task_backups"}
    tasks = planned_rules("tasks")
    assert {"task_summary", "task_backups", "task_explorer", "task_repair_bars"} <= tasks
    # a task's clean pass is clean_cache's on its {dataset}: no running-text job
    assert "clean_cache" in tasks and not tasks & {"ablate", "head_top_tokens", "fig01"}
    assert "head_explorer" not in tasks
    # Together with `all`'s own jobs, they plan what `all` plans.
    named = (figures | tables | explorer | tasks) - {"figures", "tables", "explorer", "tasks"}
    assert named <= everything


def test_a_target_after_configfile_needs_the_double_dash():
    # `--configfile X -- figures` (the spelling docs/running.md gives) plans the figures.
    proc = snakemake(
        "-n", "--forceall", "--cores", "1", "--configfile", *REDUCED_DEMO_CONFIGS, "--",
        "figures", cwd=ROOT, timeout=600,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "rule fig01:" in proc.stdout and "rule head_table:" not in proc.stdout


@pytest.mark.parametrize("entry", ['engine={"attribution": false}', "engine={attribution: false}"])
def test_config_dictionary_booleans_reach_the_schema_typed(entry):
    # Snakemake keeps "false" a string inside a --config dictionary; the schema refused it.
    assert "repair_summary" in planned_rules()
    assert "repair_summary" not in planned_rules("--config", entry)


def test_yaml_scalars_and_typed_overrides():
    assert [yaml_scalar(s) for s in ("false", "True", "3", "1.5e-3", "null")] == [
        False, True, 3, 0.0015, None,
    ]  # fmt: skip
    assert [yaml_scalar(s) for s in ("gpt2", "a: b", "[1", "1e-3")] == [
        "gpt2",
        "a: b",
        "[1",
        "1e-3",
    ]
    assert typed_value({"a": ["1", "x"], "b": {"c": "false"}}) == {"a": [1, "x"], "b": {"c": False}}
    config = {"engine": {"attribution": "false", "batch_size": 4}, "seed": "7", "x": ["2"]}
    overrides = {"engine": {"attribution": "false"}, "seed": "7", "x": ["2"]}
    sr_config.type_config_overrides(config, overrides)
    # Inside a dictionary or list: typed; the other keys kept; a top-level string stays.
    assert config == {"engine": {"attribution": False, "batch_size": 4}, "seed": "7", "x": [2]}


def test_named_target_of_each_output():
    assert named_target_of("results/figures/fig01_self_repair_per_head.png") == "figures"
    assert named_target_of("results/m/tasks/t/figures/task_repair_bars.pdf") == "figures"
    assert named_target_of("results/tables/head_summary.csv") == "tables"
    assert named_target_of("results/m/tasks/t/tables/backup_heads.html") == "tables"
    assert named_target_of("results/explorer/tasks/t/m.html") == "explorer"
    assert named_target_of("results/m/summary/resample.zarr") is None


def test_storage_table_says_unknown_not_0_b():
    estimate = {("m", "tasks", "results"): None, ("m", "tasks", "logs"): None}
    table = sr_config.storage_table(estimate)
    assert "0 B" not in table
    assert table.startswith("The planned jobs take an unknown amount on disk")
    assert shown_total(2**20, "at least ") == "at least 1.0 MB"
    assert shown_total(2**20, "") == "1.0 MB"


def test_substitutes_are_announced_only_for_planned_figures():
    config = {}
    for path in REDUCED_DEMO_CONFIGS:
        config = merged(config, load_file(path))
    sr_config.validate_run(config, ROOT / "workflow" / "schemas" / "config.schema.yaml")
    figs, mechs = sr_config.figure_targets(config), sr_config.mechanism_targets(config)
    assert len(sr_config.substitute_announcements(figs, mechs, set(figs) | set(mechs))) == 11
    assert sr_config.substitute_announcements(figs, mechs, {"task_backups"}) == []
    (line,) = sr_config.substitute_announcements(figs, mechs, {"fig03", "head_table"})
    assert line.startswith("fig03: ")


@pytest.mark.slow
def test_a_run_building_no_figure_names_no_substitute(finished_run, tmp_path):
    run, configs = finished_run
    copy = link_project(tmp_path)
    timed = shutil.ignore_patterns("logs", "benchmarks")
    shutil.copytree(run / "results", copy / "results", ignore=timed)
    shutil.copytree(run / "resources", copy / "resources")
    proc = snakemake(
        "results/tiny-gpt2/tasks/induction/tables/backup_heads.csv", "--forcerun", "task_backups", "--cores", "1", "--rerun-triggers", "mtime",
        "--configfile", *configs, cwd=Path(copy), timeout=600,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "rule task_backups:" in proc.stderr + proc.stdout
    assert "The planned jobs take" in proc.stderr  # the onstart ran
    assert not re.search(r"^(fig\d|mechanisms\.)", proc.stderr, re.MULTILINE)


def test_report_without_the_runs_configfile_says_so(tmp_path):
    # results/ of a reduced-demo run (its model folders), reported with config/config.yaml.
    run = link_project(tmp_path)
    for folder in ("tiny-gpt2/summary", "tiny-pythia", "explorer"):
        (run / "results" / folder).mkdir(parents=True)
    proc = snakemake("--report", "report.zip", cwd=run, timeout=600)
    assert proc.returncode != 0
    assert "Missing metadata" not in proc.stderr
    assert (
        "snakemake --report: results/ holds tiny-gpt2, tiny-pythia, which config/config.yaml "
        "(no --configfile) does not name, and lacks pythia-160m"
    ) in proc.stderr
    assert "--configfile config/demo.yaml" in proc.stderr


def test_report_config_problem_only_when_other_models_are_there():
    problem = sr_config.report_config_problem
    assert problem(["a"], ["a", "a@step1"], ["a", "a@step1", "tables"], []) is None
    assert problem(["a", "b"], ["a", "b"], ["a", "explorer"], ["x.yaml"]) is None  # b not run
    message = problem(["a"], ["a"], ["c", "figures"], ["x.yaml", "y.yaml"])
    assert message.startswith("snakemake --report: results/ holds c, which x.yaml y.yaml does")


def test_report_params_print_readably_without_the_caption():
    from selfrepair.config.cli import readable

    params = {
        "runs": [["tiny-gpt2", "resample"], ["tiny-pythia", "mean"]],
        "idealised_from": None,
        "heads": [],
        "top_fraction": 0.02,
        "target": {"key": "fig03", "pick": {"n": 4}, "flag": True},
        "caption": "**Measured.** Model: tiny-gpt2.",
    }
    assert sr_config.readable_params(params) == (
        "runs: tiny-gpt2 resample, tiny-pythia mean; idealised_from: none; heads: none; "
        "top_fraction: 0.02; target: key fig03, pick (n 4), flag true"
    )
    assert readable("**Measured.** x") == "Measured. x"
