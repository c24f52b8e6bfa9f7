"""Issue 34's trials through the workflow, on the reduced demo's finished run (`finished_run`):
a store written at its own place with another model's numbers, and one shard rewritten with
another model_revision, each stop the summary that reads them in one line naming the store(s)
and the fix, and the summary is not written. The stores are rewritten with write_zarr, so that
every checksum and the place pass; the run is restored afterwards (test_integrity.damaged)."""

from __future__ import annotations

import contextlib
import os

import pytest
from test_integrity import damage_line, damaged, forced

from selfrepair.stages.store import open_zarr, write_zarr

pytestmark = pytest.mark.slow


def rewritten(run, path: str, source: str | None = None, **attrs) -> None:
    """The store at `path` written again by write_zarr (at its own place, from the run's
    folder, as the workflow writes it) from the store at `source` (default: itself), with
    `attrs` over its attributes."""
    ds = open_zarr(run / (source or path)).load()
    ds.attrs.update(attrs)
    with contextlib.chdir(run):
        write_zarr(ds, path)


def mixed_line(out: str) -> str:
    """The one line the failed job ended with (its MixedStores message)."""
    lines = [x.split("MixedStores: ", 1)[1] for x in out.splitlines() if "MixedStores: " in x]
    assert lines, out[-3000:]
    return lines[0]


def test_a_task_store_holding_another_models_numbers_stops_the_summary(finished_run):
    """tiny-pythia's task ablation store written at tiny-gpt2's place (so the place passes):
    its recorded model is not the path's."""
    run, _ = finished_run
    folder = "results/tiny-gpt2/tasks/induction"
    store = f"{folder}/ablation/corrupted.zarr"
    outputs = [f"{folder}/{kind}/corrupted.zarr" for kind in ("summary", "intervals")]
    outputs.append(f"{folder}/attribution/corrupted.zarr")
    with damaged(run, [store, *outputs]):
        rewritten(run, store, source=store.replace("tiny-gpt2", "tiny-pythia"))
        code, out = forced(finished_run, outputs[0])
        assert code != 0
        assert damage_line(out, store) == (
            f"{store} is damaged: it holds model tiny-pythia, but its path names model "
            f"tiny-gpt2 (a store copied here); delete {store} and rerun the workflow"
        )
        assert not any((run / path).exists() for path in outputs)


def test_a_shard_made_with_other_weights_stops_the_summary(finished_run):
    """One ablation shard rebuilt after the weights changed (as when a weight of
    model.safetensors is flipped with its mtime kept, and the shard deleted)."""
    run, _ = finished_run
    folder = "results/tiny-gpt2/ablation/resample"
    first, second = f"{folder}/shard-000.zarr", f"{folder}/shard-001.zarr"
    outputs = [f"results/tiny-gpt2/{kind}/resample.zarr" for kind in ("summary", "intervals")]
    revision = open_zarr(run / first).attrs["model_revision"]
    other = "sha256:" + "0" * 64
    with damaged(run, [second, *outputs]):
        rewritten(run, second, model_revision=other)
        code, out = forced(finished_run, outputs[0])
        assert code != 0
        assert mixed_line(out) == (
            f"{first} and {second} were made with different model_revision {revision} and "
            f"{other}, so they are not combined: delete the one made with the old "
            "weights or config (or both) and rerun the workflow"
        )
        assert not any((run / path).exists() for path in outputs)
    assert os.path.isdir(run / second)
