"""Through the workflow: a JSON record the workflow reads back (a task's metric.json, a pick
record) edited in a finished run stops the rule that reads it in one line naming the file and
the fix, instead of reaching a figure's title or heads (issue 34, defect 2). Slow: a copy of the
reduced demo's run (`finished_run`), rerunning one figure."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
from helpers import link_project, snakemake

from selfrepair.stages.records import read_json
from selfrepair.stages.store import open_zarr

pytestmark = pytest.mark.slow

METRIC = "results/tiny-gpt2/tasks/induction/metric.json"
TASK_FIGURE = "results/tiny-gpt2/tasks/induction/figures/task_self_repair_per_head"
FIG07 = "results/figures/fig07_top_repairing_neuron"


@pytest.fixture
def run_copy(finished_run, tmp_path) -> tuple[Path, tuple[str, ...]]:
    """A copy of the finished run's results and resources, with the project linked in."""
    run, configs = finished_run
    (tmp_path / "run").mkdir()
    copy = link_project(tmp_path / "run")
    timed = shutil.ignore_patterns("logs", "benchmarks")
    shutil.copytree(run / "results", copy / "results", ignore=timed)
    shutil.copytree(run / "resources", copy / "resources")
    return copy, configs


def edited(path: Path, change) -> None:
    """The JSON file at path changed by change(content), its modification time kept (so that
    Snakemake reruns only what is asked for, as after an edit that kept the time)."""
    before = path.stat()
    content = json.loads(path.read_text())
    change(content)
    path.write_text(json.dumps(content, indent=1) + "\n")
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))


def rerun(run: Path, configs: tuple[str, ...], target: str) -> tuple[int, str]:
    # The target first: --configfile takes every argument after it.
    proc = snakemake(
        target, "--cores", "1", "--configfile", *configs, "--rerun-triggers", "mtime", cwd=run,
        timeout=600,
    )  # fmt: skip
    return proc.returncode, proc.stdout + proc.stderr


def refusal(out: str, path: str) -> str:
    """The one line naming the damaged record and the fix."""
    lines = [line for line in out.splitlines() if f"{path} is damaged: " in line]
    assert lines, out[-4000:]
    line = lines[0][lines[0].index(path) :]
    assert line.endswith(f"; delete {path} and rerun the workflow"), line
    return line


def assert_refused(run: Path, configs: tuple[str, ...], record: str, figure: str) -> None:
    """Remaking `figure` (its files deleted) from the edited `record` stops in one line naming
    the record and the fix, and writes no figure file."""
    for suffix in (".pdf", ".png"):
        (run / f"{figure}{suffix}").unlink()
    code, out = rerun(run, configs, f"{figure}.pdf")
    assert code != 0
    assert refusal(out, record) == (
        f"{record} is damaged: its content is not what was written (its digest differs); "
        f"delete {record} and rerun the workflow"
    )
    assert not (run / f"{figure}.pdf").exists() and not (run / f"{figure}.png").exists()


def test_an_edited_metric_stops_the_task_figure(run_copy):
    """The trial that made a figure's title say the model solves the task: the clean metric's
    mean edited to 4.05 and its top-1 to 0.97, the figure deleted and remade."""
    run, configs = run_copy
    assert read_json(run / METRIC)["mean"] != 4.05  # the finished run's record is sound

    def solved(content: dict) -> None:
        content.update(mean=4.05, top1=0.97)

    edited(run / METRIC, solved)
    assert_refused(run, configs, METRIC, TASK_FIGURE)


def test_a_pick_record_edited_to_another_head_stops_its_figure(run_copy):
    """Fig 7's picked head edited to another head its neuron store holds: the figure would show
    that head under the picked one's description, and exit 0."""
    run, configs = run_copy
    records = [
        p.relative_to(run).as_posix()
        for p in sorted((run / "results").glob("*/substitutes/*.json"))
        if read_json(p)["target"] == "mechanisms.neurons.fig07"
    ]
    assert len(records) == 1, records
    record = records[0]
    picked = read_json(run / record)
    held = open_zarr(run / "results" / picked["model"] / "neurons" / "reductions.zarr")
    heads = zip(held.head_layer.values, held.head_index.values, strict=True)
    others = [
        [int(layer), int(head)] for layer, head in heads if [layer, head] != picked["heads"][0]
    ]
    assert others, "the neuron store holds no other head to swap in"

    def swapped(content: dict) -> None:
        content["heads"][0] = others[0]

    edited(run / record, swapped)
    assert_refused(run, configs, record, FIG07)


def test_explorer_repairers_sets_the_repairers_each_page_lists(run_copy):
    """explorer.repairers, through the workflow: the text and the task explorer pages, rerun on
    a copy of the finished demo with the key at 2, list each measured head's two top repairers
    (analysis.attribution.top_repairers), on both kinds of page (the defaults listed five)."""

    run, configs = run_copy
    (run / "two.yaml").write_text("explorer: {repairers: 2}\n")
    pages = [Path("results/explorer/tiny-gpt2.html"), Path(EXPLORER_TASK_PAGE)]
    before = {p: _page_repairers(run / p) for p in pages}
    assert all(max(map(len, r.values())) == 5 for by in before.values() for r in by.values())
    proc = snakemake(
        *map(str, pages), "--forcerun", "head_explorer", "task_explorer", "--cores", "1",
        "--rerun-triggers", "mtime", "--configfile", *configs, "two.yaml", cwd=run, timeout=600,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    for page in pages:
        after = _page_repairers(run / page)
        assert after.keys() == before[page].keys()
        for ablation, heads in after.items():
            assert heads.keys() == before[page][ablation].keys()
            for head, listed in heads.items():
                assert listed == before[page][ablation][head][:2], (page, ablation, head)


EXPLORER_TASK_PAGE = "results/explorer/tasks/induction/tiny-gpt2.html"


def _page_repairers(path: Path) -> dict:
    """ablation -> 'L.H' -> the repairers a page lists (its embedded data)."""
    import re

    text = path.read_text()
    data = json.loads(re.search(r'id="explorer-data">(.*?)</script>', text, re.S).group(1))
    return data["repairers"]
