"""The workflow's JSON records (selfrepair.stages.records: a task's metric.json, pick records,
training.json) are read back only as written: content, place, and whole; otherwise one line
naming the file and the fix (issue 34, defect 2)."""

from __future__ import annotations

import json
import math
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from selfrepair.stages.records import (
    RECORD,
    DamagedRecord,
    json_text,
    read_json,
    record_for,
    write_json,
)

METRIC = {"label": "logit", "mean": 0.41, "top1": 0.12, "n_answers": 40, "n_prompts": 8}


def written(tmp_path: Path, content: dict = METRIC) -> Path:
    path = tmp_path / "results" / "tiny-gpt2" / "tasks" / "induction" / "metric.json"
    write_json(path, content)
    return path


def refusal(path: Path) -> str:
    with pytest.raises(DamagedRecord) as err:
        read_json(path)
    line = str(err.value)
    assert "\n" not in line and line.startswith(f"{path} is damaged: ")
    assert line.endswith(f"; delete {path} and rerun the workflow")
    return line


def test_a_record_reads_back_as_written_with_its_digest_and_place(tmp_path):
    path = written(tmp_path, METRIC | {"loss": float("nan"), "pair": (1, 2)})
    found = read_json(path)
    assert found.keys() == METRIC.keys() | {"loss", "pair"}
    assert found["mean"] == 0.41 and math.isnan(found["loss"]) and found["pair"] == [1, 2]
    stamp = json.loads(path.read_text())[RECORD]
    assert stamp["place"] == "tiny-gpt2/tasks/induction/metric.json"
    assert len(stamp["sha256"]) == 64
    assert not list(path.parent.glob(".*tmp*"))  # written through a temporary file


def test_a_record_moved_with_its_whole_run_still_reads(tmp_path):
    (tmp_path / "run").mkdir()
    path = written(tmp_path / "run")
    shutil.move(tmp_path / "run", tmp_path / "moved")
    assert read_json(tmp_path / "moved" / path.relative_to(tmp_path / "run")) == METRIC


def test_an_edited_value_is_refused(tmp_path):
    """The trial that changed a figure's title: mean 4.05 and top-1 0.97 edited in."""
    path = written(tmp_path)
    found = json.loads(path.read_text())
    path.write_text(json.dumps(found | {"mean": 4.05, "top1": 0.97}, indent=1))
    assert "its content is not what was written (its digest differs)" in refusal(path)


def test_a_pick_record_edited_to_another_head_is_refused(tmp_path):
    path = tmp_path / "results" / "tiny-gpt2" / "substitutes" / "fig07.json"
    record = {"key": "fig07", "target": "mechanisms.neurons.fig07", "heads": [[2, 0]]}
    write_json(path, record)
    assert record_for("mechanisms.neurons.fig07", [path]) == record
    path.write_text(path.read_text().replace("2,\n   0", "2,\n   1"))
    assert json.loads(path.read_text())["heads"] == [[2, 1]]
    with pytest.raises(DamagedRecord, match="its digest differs"):
        record_for("mechanisms.neurons.fig07", [path])


def test_a_record_copied_onto_another_place_is_refused(tmp_path):
    """Every byte is a valid record, but of another model's task."""
    path = written(tmp_path)
    other = tmp_path / "results" / "tiny-pythia" / "tasks" / "induction" / "metric.json"
    write_json(other, METRIC | {"mean": 3.2})
    shutil.copy(other, path)
    line = refusal(path)
    assert "it was written as tiny-pythia/tasks/induction/metric.json" in line
    assert "not as tiny-gpt2/tasks/induction/metric.json" in line


def test_a_truncated_record_is_refused(tmp_path):
    path = written(tmp_path)
    path.write_bytes(path.read_bytes()[:-40])
    assert "it cannot be read as JSON" in refusal(path)


@pytest.mark.parametrize(
    "text",
    [
        json.dumps(METRIC),  # written before records had one, or by hand
        json.dumps(METRIC | {RECORD: {"place": "tiny-gpt2/tasks/induction/metric.json"}}),
        json.dumps([METRIC]),
        "",
    ],
    ids=["no-record", "no-digest", "not-an-object", "empty"],
)
def test_a_record_without_its_record_is_refused(tmp_path, text):
    path = written(tmp_path)
    path.write_text(text)
    refusal(path)


def test_a_record_without_its_place_is_refused(tmp_path):
    path = written(tmp_path)
    found = json.loads(path.read_text())
    del found[RECORD]["place"]
    path.write_text(json.dumps(found))
    assert "it records no place it was written to" in refusal(path)


def test_a_missing_record_names_the_stage(tmp_path):
    with pytest.raises(FileNotFoundError, match="run the workflow stage that makes it"):
        read_json(tmp_path / "results" / "m" / "metric.json")


def test_the_record_key_is_reserved_and_other_keys_stay_readable(tmp_path):
    """training.json keeps its own keys at the top level for other tools."""
    with pytest.raises(ValueError, match=RECORD):
        json_text({RECORD: 1}, tmp_path / "x.json")
    text = json_text({"heldout_loss": 2.5}, tmp_path / "models" / "m" / "training.json", indent=2)
    assert json.loads(text)["heldout_loss"] == 2.5


def test_the_snakefile_reads_records_without_torch_or_zarr():
    """rules/common.smk reads records while Snakemake builds the DAG: a light import."""
    code = (
        "import sys, selfrepair.stages.records\n"
        "heavy = {'torch', 'zarr', 'xarray', 'numpy'} & set(sys.modules)\n"
        "assert not heavy, heavy\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
