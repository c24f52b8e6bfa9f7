"""The docs' code examples run as written: docs/storage.md's xarray example (open a store,
select a head, plot it) on a finished reduced-demo run; README.md's prompts-task recipe on a
fresh checkout, through a dry run."""

from __future__ import annotations

import json
import re
import shlex
import subprocess
import sys

import pytest
import yaml
from helpers import ROOT, link_project, snakemake


def python_blocks(page: str) -> list[str]:
    """The ```python blocks of a docs page, in order."""
    text = (ROOT / "docs" / page).read_text()
    return re.findall(r"^```python\n(.*?)^```$", text, re.MULTILINE | re.DOTALL)


def test_the_storage_page_has_its_xarray_example():
    (block,) = python_blocks("storage.md")
    assert "xr.open_zarr" in block and ".sel(layer=3, head=1)" in block


@pytest.mark.slow
def test_the_xarray_example_runs_on_a_finished_run(finished_run, tmp_path):
    run, _ = finished_run
    (tmp_path / "results").symlink_to(run / "results")  # the example writes into its folder
    (block,) = python_blocks("storage.md")
    proc = subprocess.run(
        [sys.executable, "-c", block], cwd=tmp_path, capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert re.fullmatch(r"L3H1 self-repair -?\d+\.\d{3}, clean DE -?\d+\.\d{3}\n", proc.stdout)
    assert (tmp_path / "self_repair.png").stat().st_size > 1000


def readme_task_recipe() -> tuple[str, str]:
    """(the config block, the command) of README.md's 'Add a task or your own prompts'."""
    text = (ROOT / "README.md").read_text()
    section = text[text.index("## Add a task or your own prompts") :].split("\n## ")[0]
    (block,) = re.findall(r"^```yaml\n(.*?)^```$", section, re.MULTILINE | re.DOTALL)
    (command,) = re.findall(r"`(\.venv/bin/snakemake [^`]+)`", section)
    return block, command


def test_the_readme_prompts_recipe_plans_as_written(tmp_path):
    """README.md's recipe on a fresh checkout (no results/, no resources/): the config block
    saved as the file it names, a two-line prompts file of the fields it names, and its command
    as a dry run plan the task's jobs with the prompts file as task_prompts' input."""
    block, command = readme_task_recipe()
    run = link_project(tmp_path, test_configs=False)
    config_file = re.search(r"Save it as `([^`]+\.yaml)`", (ROOT / "README.md").read_text())[1]
    (run / config_file).write_text(block)
    (name,) = yaml.safe_load(block)["tasks"]
    prompts = yaml.safe_load(block)["tasks"][name]["file"]
    lines = [
        {"prompt": "def f(x):\n    return", "answer": " x"},
        {"prompt": "a = b", "answer": "\n"},
    ]
    (run / prompts).write_text("".join(json.dumps(x) + "\n" for x in lines))
    args = shlex.split(command)
    assert args[0] == ".venv/bin/snakemake" and config_file in args
    proc = snakemake("-n", *args[1:], cwd=run, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    planned = proc.stdout.split("\nrule task_prompts:")[1:]
    mine = [job for job in planned if f"tasks/{name}/prompts.zarr" in job.split("output:")[1]]
    # every model of the demo: the two text models and induction-pythia (a tasks_only model is
    # measured by every task that does not name its models)
    assert len(mine) == 3 and all(prompts in job.split("output:")[0] for job in mine)
    assert f"results/tiny-gpt2/tasks/{name}/tables/per_head.csv" in proc.stdout
