"""A store holds what its path names, and stores combined into one result were made alike:
- its place is recorded below the run's own results/ folder, not below a later folder of that
  name (a task named `results`), so one model's store copied over another's is refused;
- the model, task and ablation it records must be those its path names (a store written at
  the right place with another model's data is refused);
- shards or stores of one job made with other weights or config are never combined.
Each fails in one line naming the store(s) and the fix."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import xarray as xr

import selfrepair.stages.integrity as integrity
import selfrepair.stages.store as store
from selfrepair.stages.joblog import SAME_WEIGHTS_KEYS, run_difference

RUN_ATTRS = {
    "model_entry": {"name": "m"},
    "data": {"n_tokens": 64},
    "engine": {"batch_size": 8, "top_fraction": 0.02},
    "seed": 0,
    "device": "cpu",
    "dtype": "float32",
    "model_revision": "sha256:aaaa",
}


def written(path: Path | str, rows: range = range(4), **attrs) -> Path:
    """A small store written by write_zarr at path, with provenance-like attributes."""
    ds = xr.Dataset(
        {"x": (("batch", "pos"), np.arange(len(rows) * 3, dtype=np.float32).reshape(-1, 3))},
        coords={"batch": list(rows)},
        attrs={**RUN_ATTRS, **attrs},
    )
    store.write_zarr(ds, path)
    return Path(path)


# --- the place: below the run's own results/ folder ---------------------------------------------


@pytest.mark.parametrize(
    ("path", "place"),
    [
        ("results/m/summary/resample.zarr", "m/summary/resample.zarr"),
        # a task named results: the run's results/ is the first, not the last
        (
            "results/m/tasks/results/ablation/corrupted.zarr",
            "m/tasks/results/ablation/corrupted.zarr",
        ),
        ("results/results/results/x.zarr", "results/results/x.zarr"),
        ("results/m/tasks/t/results.zarr", "m/tasks/t/results.zarr"),
        ("a/b.zarr", "b.zarr"),
        ("results.zarr", "results.zarr"),
    ],
)
def test_the_place_is_below_the_runs_own_results_folder(path, place, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert integrity.store_place(path) == place
    # the same path given absolute, under the working directory
    assert integrity.store_place(tmp_path / path) == place


def test_the_place_of_a_run_inside_a_results_folder(tmp_path, monkeypatch):
    """The working directory itself below a folder named results (say ~/results/run1): the
    run's results/ is the one inside it."""
    run = tmp_path / "results" / "run1"
    run.mkdir(parents=True)
    monkeypatch.chdir(run)
    assert integrity.store_place("results/m/clean/shard-000.zarr") == "m/clean/shard-000.zarr"
    assert integrity.store_place(run / "results/m/x.zarr") == "m/x.zarr"


def test_the_place_of_a_path_outside_the_working_directory(tmp_path, monkeypatch):
    (tmp_path / "cwd").mkdir()
    monkeypatch.chdir(tmp_path / "cwd")
    path = tmp_path / "other" / "results" / "m" / "tasks" / "results" / "ablation" / "a.zarr"
    assert integrity.store_place(path) == "m/tasks/results/ablation/a.zarr"


def test_a_task_named_results_keeps_two_models_stores_apart(tmp_path, monkeypatch):
    """The trial of issue 34: one model's task store copied over another's, under a task named
    results, was read as the other's (both recorded ablation/corrupted.zarr)."""
    monkeypatch.chdir(tmp_path)
    where = "tasks/results/ablation/corrupted.zarr"
    gpt2 = written(f"results/tiny-gpt2/{where}", model="tiny-gpt2", task="results")
    pythia = written(f"results/tiny-pythia/{where}", model="tiny-pythia", task="results")
    shutil.rmtree(gpt2)
    shutil.copytree(pythia, gpt2)
    with pytest.raises(store.DamagedStore) as caught:
        store.open_zarr(gpt2)
    assert str(caught.value) == (
        f"{gpt2} is damaged: it was written as tiny-pythia/{where} (a store copied or renamed "
        f"onto this path), not as tiny-gpt2/{where}; delete {gpt2} and rerun the workflow"
    )


# --- the identity: what the store records against what its path names --------------------------


IDENTITIES = {
    "another model": (
        "results/tiny-gpt2/tasks/induction/ablation/corrupted.zarr",
        dict(model="tiny-pythia", task="induction", ablation="corrupted"),
        "it holds model tiny-pythia, but its path names model tiny-gpt2 (a store copied here)",
    ),
    "another task": (
        "results/m/tasks/induction/summary/mean.zarr",
        dict(model="m", task="ioi", ablation="mean"),
        "it holds task ioi, but its path names task induction (a store copied here)",
    ),
    "a task's store outside tasks/": (
        "results/m/summary/mean.zarr",
        dict(model="m", task="ioi"),
        "it holds task ioi, but its path names no task (a store copied here)",
    ),
    "another ablation": (
        "results/m/tasks/induction/ablation/mean.zarr",
        dict(model="m", task="induction", ablation="corrupted"),
        "it holds ablation corrupted, but its path names mean",
    ),
    "frozen LayerNorm": (
        "results/m/attribution/resample/shard-000.zarr",
        dict(model="m", ablation="resample", freeze_ln=1),
        "it holds ablation resample-frozen-ln, but its path names resample",
    ),
}


@pytest.mark.parametrize("case", IDENTITIES)
def test_a_store_holding_what_its_path_does_not_name_is_refused(case, tmp_path, monkeypatch):
    """Written at its own place (so the place check passes) with another's identity."""
    monkeypatch.chdir(tmp_path)
    path, attrs, problem = IDENTITIES[case]
    written(path, **attrs)
    with pytest.raises(store.DamagedStore) as caught:
        store.open_zarr(path)
    assert str(caught.value) == (
        f"{path} is damaged: {problem}; delete {path} and rerun the workflow"
    )


@pytest.mark.parametrize(
    ("path", "attrs"),
    [
        ("results/m/tasks/induction/attribution/detail-corrupted.zarr", {"ablation": "corrupted"}),
        ("results/m/attribution/resample-frozen-ln/shard-000.zarr", {"freeze_ln": 1}),
        ("results/m/attribution/resample/shard-000.zarr", {"freeze_ln": 0}),
        ("results/m@step50/ablation/resample/shard-000.zarr", {"model": "m@step50"}),
        ("results/m/norms/zero.zarr", {"ablation": "zero"}),
        ("results/m/summary/resample-frozen-ln.zarr", {"ablation": "resample-frozen-ln"}),
        ("results/m/tasks/induction/attribution/sums-mean.zarr", {"ablation": "mean"}),
        ("results/m/neurons/selected.zarr", {"ablation": "zero"}),
    ],
)
def test_a_store_holding_what_its_path_names_opens(path, attrs, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    task = {"task": "induction"} if "/tasks/" in path else {}
    written(path, **{"model": "m", "ablation": "resample", **task, **attrs})
    store.open_zarr(path).load()


def test_the_identity_is_read_from_the_place_once_results_is_moved(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    path = "results/m/tasks/t/ablation/mean.zarr"
    written(path, model="other", task="t", ablation="mean")
    shutil.move(tmp_path / "results", tmp_path / "elsewhere")
    with pytest.raises(
        store.DamagedStore, match="it holds model other, but its path names model m"
    ):
        store.open_zarr(tmp_path / "elsewhere/m/tasks/t/ablation/mean.zarr")


def test_a_store_recording_no_model_is_not_the_workflows_and_opens(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    store.write_zarr(xr.Dataset({"x": ("a", [1.0])}), "results/m/x.zarr")
    store.open_zarr("results/m/x.zarr").load()


# --- stores combined: the same weights and config ----------------------------------------------


def test_run_difference_names_the_first_key_that_differs():
    a = {**RUN_ATTRS, "model": "m", "rows": [0, 4], "device": "cpu", "versions": {"torch": "1"}}
    assert run_difference(a, {**a, "rows": [4, 8], "device": "cuda", "versions": {}}) is None
    assert run_difference(a, {**a, "model_revision": "sha256:bbbb"}) == (
        "model_revision sha256:aaaa and sha256:bbbb"
    )
    engine = {**RUN_ATTRS["engine"], "batch_size": 16}
    assert run_difference(a, {**a, "engine": engine}) == "engine.batch_size 8 and 16"
    assert run_difference(a, {**a, "seed": 1, "ablation": "mean"}) == "seed 0 and 1"
    assert run_difference(a, {**a, "checkpoint_step": 50}) is None  # its model key differs
    assert run_difference(a, {**a, "model": "m@step50", "checkpoint_step": 50}) == (
        "model m and m@step50"
    )
    assert run_difference({**a, "metric": "x"}, {**a, "metric": None}) == "metric x and None"
    assert run_difference(a, {**a, "engine": {}}, SAME_WEIGHTS_KEYS) is None
    long = {**a, "model_revision": "sha256:" + "b" * 64}
    assert run_difference(a, long) == f"model_revision sha256:aaaa and sha256:{'b' * 64}"
    long = {**a, "model_entry": {"name": "m", "path": "/" + "p" * 90}}
    assert run_difference(a, long) == f"model_entry.path None and /{'p' * 76}..."


@pytest.mark.parametrize("opener", ["open_shards", "open_shard_list"])
def test_shards_made_with_other_weights_are_not_combined(opener, tmp_path, monkeypatch):
    """The trial of issue 34: one shard rebuilt after the weights changed (mtime kept)."""
    monkeypatch.chdir(tmp_path)
    folder = "results/m/ablation/resample"
    first = written(f"{folder}/shard-000.zarr", range(0, 4), model="m")
    second = written(
        f"{folder}/shard-001.zarr", range(4, 8), model="m", model_revision="sha256:bbbb"
    )
    getattr(store, opener)([first, written(f"{folder}/shard-002.zarr", range(4, 8), model="m")])
    with pytest.raises(store.MixedStores) as caught:
        getattr(store, opener)([first, second])
    assert str(caught.value) == (
        f"{first} and {second} were made with different model_revision sha256:aaaa and "
        "sha256:bbbb, so they are not combined: delete the one made with the old weights or "
        "config (or both) and rerun the workflow"
    )


def test_shards_made_with_another_config_are_not_combined(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    folder = "results/m/clean"
    first = written(f"{folder}/shard-000.zarr", range(0, 4), model="m")
    engine = {**RUN_ATTRS["engine"], "top_fraction": 0.05}
    second = written(f"{folder}/shard-001.zarr", range(4, 8), model="m", engine=engine)
    with pytest.raises(store.MixedStores, match=r"different engine\.top_fraction 0\.02 and 0\.05"):
        store.open_token_shards([first, second], "m")
