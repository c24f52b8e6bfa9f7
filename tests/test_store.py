"""Damaged stores never reach a number: every chunk carries a CRC32C checksum verified when it is
loaded, and the chunk files of every array are compared with what its shape implies. Each kind of
damage is made in a real ablation shard, clean shard and per-head summary, then the stage that
reads the store (or a plain load) must stop with one line naming the store, the array and the
fix, before writing anything."""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import xarray as xr
import zarr

import selfrepair.stages.integrity as integrity
import selfrepair.stages.store as store
from selfrepair.models.builders import build_model
from selfrepair.stages.ablation import ablate
from selfrepair.stages.clean import clean_cache
from selfrepair.stages.job import ModelJob, read_token_rows
from selfrepair.stages.repair import head_top_tokens
from selfrepair.stages.summaries import summarize_heads
from selfrepair.variables import HEAD_VARIABLES

N_CTX, VOCAB = 16, 64
TOP_K = 30  # a quarter of the 8 x 15 predictions: top_fraction 0.25
pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def made(tmp_path_factory) -> dict[str, Path]:
    """An ablation shard, a clean shard and a summary, as the workflow writes them."""
    root = tmp_path_factory.mktemp("stores")
    checkpoint = str(root / "tiny")
    build_model("gpt2", VOCAB, 2, 32, 4, N_CTX, seed=0).save_pretrained(checkpoint)
    rows = np.random.default_rng(0).integers(1, VOCAB, (8, N_CTX), dtype=np.int32)
    rows[:, 0] = 0
    tokens = root / "tokens.zarr"
    store.write_zarr(xr.Dataset({"tokens": (("row", "tok"), rows)}), tokens, chunks={"row": 4})
    job = ModelJob(
        tokens=str(tokens),
        shards=(0, 8),
        entry={"name": "tiny"},
        checkpoint=checkpoint,
        device="cpu",
        dtype="float32",
        batch_size=4,
    )
    ablate(
        job,
        ablation="resample",
        heads_per_pass=4,
        mean_include_bos=True,
        out=str(root / "shard-000.zarr"),
        attrs={"seed": 0},
    )
    clean_cache(job, out=str(root / "clean-000.zarr"), attrs={"seed": 0})
    clean_cache(job, out=str(root / "clean-top-000.zarr"), attrs={"seed": 0}, top_k=TOP_K)
    head_top_tokens(
        shards=[str(root / "clean-000.zarr")],
        top_fraction=0.25,
        out=str(root / "top.zarr"),
        attrs={},
    )
    summarize(root / "shard-000.zarr", root / "summary.zarr")
    return {
        "tokens": tokens,
        "shard": root / "shard-000.zarr",
        "clean": root / "clean-000.zarr",
        "clean-top": root / "clean-top-000.zarr",
        "summary": root / "summary.zarr",
        "top": root / "top.zarr",
    }


def summarize(shard: Path | list[str], out: Path) -> xr.Dataset:
    """summarize_heads' summary (its intervals written beside it), with the top-token store
    beside the first shard."""
    shards = [str(shard)] if isinstance(shard, Path) else shard
    return summarize_heads(
        shards=shards,
        top_tokens=str(Path(shards[0]).parent / "top.zarr"),
        top_fraction=0.25,
        de_epsilon=1e-6,
        n_resamples=20,
        level=0.9,
        seed=0,
        out=str(out),
        intervals_out=str(out.with_name(f"intervals-{out.name}")),
        attrs={},
    )[0]


def read_summary(summary: Path, out: Path) -> np.ndarray:
    """A reader of the summary: the numbers a table or figure would draw."""
    return store.open_zarr(summary)["mean_de_ablated"].values


# store kind -> (array damaged, the stage or read that uses it)
USES = {
    "shard": ("de_ablated", lambda path, out: summarize(path, out)),
    "clean": ("de_head", lambda path, out: store.open_zarr(path).load()),
    "clean-top": (  # engine.store_tokens: top; its reader picks the top tokens from it
        "top_candidate_de_head",
        lambda path, out: head_top_tokens(
            shards=[str(path)], top_fraction=0.25, out=str(out), attrs={}
        ),
    ),
    "summary": ("mean_de_ablated", read_summary),
    "tokens": ("tokens", lambda path, out: read_token_rows(str(path), 4, 8)),
}


def chunk_files(array: Path) -> list[Path]:
    return sorted(p for p in array.iterdir() if not p.name.startswith("."))


def flip_bit(chunk: Path) -> None:
    data = bytearray(chunk.read_bytes())
    data[len(data) // 2] ^= 0x10
    chunk.write_bytes(bytes(data))


def truncate(chunk: Path) -> None:
    chunk.write_bytes(chunk.read_bytes()[:-9])


def random_bytes(chunk: Path) -> None:
    chunk.write_bytes(np.random.default_rng(1).bytes(chunk.stat().st_size))


def swap_for_another_file(chunk: Path) -> None:
    """The chunk deleted and another file put beside it: the file count stays the same."""
    chunk.unlink()
    (chunk.parent / "notes.txt").write_text("not a chunk")


def overwrite_with_another_chunk(chunk: Path) -> None:
    """The chunk's bytes replaced by another valid chunk (it passes its own checksum): another
    chunk of its array, else the same chunk of another array, else any other chunk."""
    others = [p for p in chunk_files(chunk.parent) if p != chunk]
    others += [p for p in chunk.parents[1].glob(f"*/{chunk.name}") if p != chunk]
    others += [p for p in chunk.parents[1].glob("*/[0-9]*") if p.parent != chunk.parent]
    chunk.write_bytes(others[0].read_bytes())


def lost(chunk: Path) -> None:
    chunk.unlink()


def stray_in_store(chunk: Path) -> None:
    (chunk.parents[1] / "extra").write_bytes(b"stray")


def flip_stored_checksum_bit(chunk: Path) -> None:
    data = bytearray(chunk.read_bytes())
    data[-1] ^= 0x01
    chunk.write_bytes(bytes(data))


def _edit_json(file: Path, edit) -> None:
    meta = json.loads(file.read_text())
    edit(meta)
    file.write_text(json.dumps(meta))


def separator_flipped_in_zmetadata(chunk: Path) -> None:
    """The consolidated metadata readers use says "/" where the array's chunks are named with
    "." (xarray would read every chunk as missing, i.e. fill values)."""
    key = f"{chunk.parent.name}/.zarray"
    _edit_json(
        chunk.parents[1] / ".zmetadata",
        lambda m: m["metadata"][key].update(dimension_separator="/"),
    )


def zarray_edited_and_consolidated(chunk: Path) -> None:
    """An array's fill value changed in its .zarray, and .zmetadata rebuilt to agree."""
    _edit_json(
        chunk.parent / ".zarray",
        lambda m: m.update(fill_value=7.0 if m["dtype"][1] == "f" else 7),
    )
    zarr.consolidate_metadata(str(chunk.parents[1]), zarr_format=2)


def array_attrs_edited(chunk: Path) -> None:
    _edit_json(chunk.parent / ".zattrs", lambda m: m["_ARRAY_DIMENSIONS"].reverse())


def root_attrs_edited_in_zmetadata(chunk: Path) -> None:
    _edit_json(chunk.parents[1] / ".zmetadata", lambda m: m["metadata"][".zattrs"].update(x=1))


def metadata_file_lost(chunk: Path) -> None:
    (chunk.parent / ".zattrs").unlink()


def zmetadata_truncated(chunk: Path) -> None:
    meta = chunk.parents[1] / ".zmetadata"
    meta.write_bytes(meta.read_bytes()[:-20])


# Damage to a chunk's content fails its checksum when loaded; damage that changes its last 4
# bytes (the stored checksum) is already seen when the store is opened; so is damage to any
# metadata file (each must equal its copy in .zmetadata, and both the store's record).
CHECKSUM = "a chunk of array {array} fails its CRC32C checksum"
NOT_WRITTEN = "array {array} chunk {chunk} is not the file written there"
DAMAGE = {
    "bit flip": (flip_bit, CHECKSUM),
    "bit flip in the checksum": (flip_stored_checksum_bit, NOT_WRITTEN),
    "truncated": (truncate, NOT_WRITTEN),
    "random bytes": (random_bytes, NOT_WRITTEN),
    "overwritten": (overwrite_with_another_chunk, NOT_WRITTEN),
    "swapped": (swap_for_another_file, "array {array} lacks chunk files {chunk} "),
    "lost": (lost, "array {array} lacks chunk files {chunk} "),
    "stray in store": (stray_in_store, "stray entries extra in the store"),
    "separator flipped in .zmetadata": (
        separator_flipped_in_zmetadata,
        "its metadata file {array}/.zarray differs from its copy in .zmetadata",
    ),
    ".zarray edited and consolidated": (
        zarray_edited_and_consolidated,
        r"its metadata file {array}/.zarray is not the one written \(its digest differs\)",
    ),
    "array attributes edited": (
        array_attrs_edited,
        "its metadata file {array}/.zattrs differs from its copy in .zmetadata",
    ),
    "root attributes edited in .zmetadata": (
        root_attrs_edited_in_zmetadata,
        "its metadata file .zattrs differs from its copy in .zmetadata",
    ),
    "metadata file lost": (
        metadata_file_lost,
        r"its metadata files and .zmetadata disagree on which exist \({array}/.zattrs\)",
    ),
    ".zmetadata truncated": (
        zmetadata_truncated,
        "its consolidated metadata .zmetadata is missing or cannot be read",
    ),
}


@pytest.mark.parametrize("kind", ["shard", "clean", "clean-top", "summary", "tokens"])
@pytest.mark.parametrize("damage", DAMAGE)
def test_damaged_store_stops_its_reader_in_one_line(made, kind, damage, tmp_path):
    array, use = USES[kind]
    damaged = tmp_path / made[kind].name
    shutil.copytree(made[kind], damaged)
    if kind == "shard":  # summarize_heads reads the top-token store beside it
        shutil.copytree(made["top"], tmp_path / "top.zarr")
    chunk = chunk_files(damaged / array)[-1]  # the last: in the rows or layer a reader uses
    make, what = DAMAGE[damage]
    make(chunk)
    out = tmp_path / "out.zarr"
    with pytest.raises(store.DamagedStore) as caught:
        use(damaged, out)
    message = str(caught.value)
    expected = what.format(array=array, chunk=re.escape(chunk.name))
    assert re.fullmatch(
        rf"{re.escape(str(damaged))} is damaged: {expected}.*; delete "
        rf"{re.escape(str(damaged))} and rerun the workflow",
        message,
    ), message
    assert "\n" not in message
    assert not out.exists()  # nothing was made from it


def test_undamaged_stores_read_back_whole(made):
    for path in made.values():
        store.open_zarr(path).load()
    shard = store.open_zarr(made["shard"], variables=HEAD_VARIABLES)
    summary = summarize(made["shard"], made["shard"].parent / "again.zarr")
    xr.testing.assert_equal(store.open_zarr(made["summary"]).load(), summary)
    assert np.isfinite(shard.de_ablated.values).any()


def test_every_array_carries_a_checksum(made):
    for path in made.values():
        for meta in path.glob("*/.zarray"):
            assert '"id": "crc32c"' in meta.read_text(), meta


def test_chunk_files_are_compared_with_the_shape(tmp_path):
    path = tmp_path / "s.zarr"
    ds = xr.Dataset({"x": (("a", "b"), np.zeros((5, 3))), "s": ((), 1.0)})
    store.write_zarr(ds, path, chunks={"a": 2})
    recorded = json.loads((path / ".zattrs").read_text())[integrity.CHUNK_CHECKSUMS]
    assert set(recorded) == {"x", "s"} and set(recorded["x"]) == {"0.0", "1.0", "2.0"}
    assert integrity.chunk_file_problem(path, recorded) is None
    assert sorted(p.name for p in chunk_files(path / "x")) == ["0.0", "1.0", "2.0"]
    os.rename(path / "x" / "2.0", path / "x" / "3.0")
    assert (
        integrity.chunk_file_problem(path, recorded)
        == "array x lacks chunk files 2.0 (2 of its 3 present)"
    )
    os.rename(path / "x" / "3.0", path / "x" / "2.0")
    (path / "x" / "sub").mkdir()
    (path / "x" / "sub" / "0.0").write_bytes(b"")
    assert (
        integrity.chunk_file_problem(path, recorded)
        == "array x has stray files sub/0.0 beside its chunks"
    )


@pytest.fixture(scope="module")
def two_shards(made, tmp_path_factory) -> list[Path]:
    """The two ablation shards of one run, at their places under results/."""
    folder = tmp_path_factory.mktemp("run") / "results" / "tiny" / "ablation" / "resample"
    paths = [folder / f"shard-{i:03d}.zarr" for i in range(2)]
    for i, path in enumerate(paths):
        job = ModelJob(
            tokens=str(made["tokens"]),
            shards=(4 * i, 4 * i + 4),
            entry={"name": "tiny"},
            checkpoint=str(made["tokens"].parent / "tiny"),
            batch_size=4,
        )
        ablate(
            job,
            ablation="resample",
            heads_per_pass=4,
            mean_include_bos=True,
            out=str(path),
            attrs={"seed": 0},
        )
    return paths


def test_a_store_records_its_place_below_results(two_shards):
    assert integrity.store_place(two_shards[1]) == "tiny/ablation/resample/shard-001.zarr"
    assert integrity.store_place("a/b.zarr") == "b.zarr"
    attrs = json.loads((two_shards[1] / ".zattrs").read_text())
    assert attrs[integrity.PLACE] == "tiny/ablation/resample/shard-001.zarr"
    both = store.open_shards(two_shards, variables=HEAD_VARIABLES)
    assert both.batch.values.tolist() == list(range(8))


@pytest.mark.parametrize("onto", ["another shard", "another model"])
def test_a_store_copied_onto_another_path_is_refused(two_shards, onto, tmp_path):
    """shard-001 copied over shard-000 (every checksum passes): summarize_heads stops naming
    both places, before writing anything."""
    run = tmp_path / "results" / "tiny" / "ablation" / "resample"
    for path in two_shards:
        shutil.copytree(path, run / path.name)
    if onto == "another shard":
        target = run / "shard-000.zarr"
        shutil.rmtree(target)
        shutil.copytree(two_shards[1], target)
        recorded = "tiny/ablation/resample/shard-001.zarr"
    else:  # the same shard of another model's run
        target = tmp_path / "results" / "other" / "ablation" / "resample" / "shard-000.zarr"
        shutil.copytree(two_shards[0], target)
        recorded = "tiny/ablation/resample/shard-000.zarr"
    out = tmp_path / "summary.zarr"
    shards = [str(target), str(run / "shard-001.zarr")]
    with pytest.raises(store.DamagedStore) as caught:
        summarize(shards, out)
    assert str(caught.value) == (
        f"{target} is damaged: it was written as {recorded} (a store copied or renamed onto "
        f"this path), not as {integrity.store_place(target)}; delete {target} and rerun the workflow"
    )
    assert not out.exists()


def test_the_results_folder_moved_as_a_whole_still_opens(two_shards, tmp_path):
    moved = tmp_path / "elsewhere" / "tiny" / "ablation" / "resample"
    for path in two_shards:
        shutil.copytree(path, moved / path.name)
    store.open_shards([moved / p.name for p in two_shards]).load()


def test_shards_out_of_order_are_refused(two_shards):
    with pytest.raises(store.DamagedStore, match=r"holds rows 4\.\.7 where rows from 0 were"):
        store.open_shards(list(reversed(two_shards)))
