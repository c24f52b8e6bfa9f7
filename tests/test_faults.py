"""Faults and bad input lose nothing: stores are atomic and checked when read, bad config fails
in one line before any work, jobs are deterministic and record their provenance."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import xarray as xr
import yaml

from selfrepair import pipeline, store
from selfrepair.config import ConfigError, check_run, model_entries
from selfrepair.forward import NonFiniteActivation
from selfrepair.training import build_model
from selfrepair.variables import HEAD_VARIABLES

ROOT = Path(__file__).resolve().parents[1]
N_CTX, VOCAB = 16, 64
pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """A small random GPT-2 style Hugging Face checkpoint on disk, as the workflow trains."""
    path = tmp_path_factory.mktemp("ckpt") / "tiny"
    build_model("gpt2", VOCAB, 2, 32, 4, N_CTX, seed=0).save_pretrained(str(path))
    return str(path)


@pytest.fixture(scope="module")
def tokens(tmp_path_factory):
    rows = np.random.default_rng(0).integers(1, VOCAB, (8, N_CTX), dtype=np.int32)
    rows[:, 0] = 0
    path = tmp_path_factory.mktemp("tokens") / "tokens.zarr"
    store.write_zarr(xr.Dataset({"tokens": (("row", "tok"), rows)}), path)
    return str(path)


def stage_args(tokens, checkpoint, out, **over):
    args = dict(
        tokens=tokens,
        bounds=(0, 8),
        entry={"name": "tiny"},
        checkpoint=checkpoint,
        device="cpu",
        dtype="float32",
        batch_size=4,
        out=str(out),
        attrs={"seed": 0, "data": {"seq_len": N_CTX}},
    )
    return {**args, **over}


def ablate(tokens, checkpoint, out, **over):
    args = dict(ablation="resample", heads_per_pass=4, mean_include_bos=True)
    return pipeline.ablate_shard(**stage_args(tokens, checkpoint, out, **{**args, **over}))


# --- stores -----------------------------------------------------------------------------------


def small_store(path) -> xr.Dataset:
    ds = xr.Dataset({"x": (("a", "b"), np.arange(12.0).reshape(3, 4))})
    store.write_zarr(ds, path, chunks={"a": 1})
    return ds


def test_store_round_trip_keeps_nan_chunks(tmp_path):
    ds = xr.Dataset({"x": (("a", "b"), np.full((3, 4), np.nan))})
    store.write_zarr(ds, tmp_path / "s.zarr", chunks={"a": 1})
    back = store.open_zarr(tmp_path / "s.zarr", variables=("x",))
    assert np.isnan(back.x.values).all() and back.x.shape == (3, 4)


def test_foreign_zarr_store_is_refused(tmp_path):
    xr.Dataset({"tokens": (("row", "tok"), np.zeros((2, 3)))}).to_zarr(
        tmp_path / "foreign.zarr", zarr_format=2, consolidated=True
    )
    with pytest.raises(ValueError, match=r"did not write .*; delete .*foreign\.zarr and rerun"):
        store.open_zarr(tmp_path / "foreign.zarr")


def test_store_without_expected_variables_is_refused(tmp_path):
    small_store(tmp_path / "s.zarr")
    with pytest.raises(ValueError, match=r"lacks variables tokens; delete .*s\.zarr and rerun"):
        pipeline.read_token_rows(str(tmp_path / "s.zarr"), 0, 1)


def test_store_with_a_lost_chunk_is_refused(tmp_path):
    small_store(tmp_path / "s.zarr")
    (tmp_path / "s.zarr" / "x" / "1.0").unlink()
    with pytest.raises(ValueError, match=r"damaged: array x lacks chunk files 1\.0 \(2 of its 3"):
        store.open_zarr(tmp_path / "s.zarr")


def test_store_with_garbled_metadata_is_refused(tmp_path):
    small_store(tmp_path / "s.zarr")
    (tmp_path / "s.zarr" / ".zmetadata").write_text("{not json")
    with pytest.raises(ValueError, match="not a readable Zarr store"):
        store.open_zarr(tmp_path / "s.zarr")


def test_missing_store_names_the_stage(tmp_path):
    with pytest.raises(FileNotFoundError, match="run the workflow stage"):
        store.open_zarr(tmp_path / "absent.zarr")


def test_failed_write_leaves_the_old_store_and_no_partial_one(tmp_path, monkeypatch):
    path = tmp_path / "s.zarr"
    old = small_store(path)

    def write_half_then_die(self, target, **kwargs):
        (target / "x").mkdir(parents=True)
        (target / "x" / "0.0").write_bytes(b"partial")
        raise KeyboardInterrupt  # as a killed job stops mid-write

    monkeypatch.setattr(xr.Dataset, "to_zarr", write_half_then_die)
    with pytest.raises(KeyboardInterrupt):
        store.write_zarr(old * 2, path)
    monkeypatch.undo()
    xr.testing.assert_equal(store.open_zarr(path).x.load(), old.x)
    small_store(path)  # the next write clears the killed write's leftovers
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s.zarr"]


# --- config checked before any work ------------------------------------------------------------


def demo_config() -> dict:
    from snakemake.utils import validate

    config = yaml.safe_load((ROOT / "config" / "demo.yaml").read_text())
    validate(config, str(ROOT / "workflow" / "schemas" / "config.schema.yaml"))
    return config


def test_too_few_tokens_for_the_top_selection_names_the_key():
    config = demo_config()
    config["data"]["n_tokens"] = 300
    with pytest.raises(ConfigError, match=r"config key data\.n_tokens: .* raise data\.n_tokens"):
        check_run(config, model_entries(config))
    config["data"]["n_tokens"] = 600  # 5 rows of 127 predictions: 12.7 tokens in the top 2%
    check_run(config, model_entries(config))


def test_head_out_of_range_of_a_trained_model_names_the_key():
    config = demo_config()
    config["models"][0]["heads"] = [[1, 2], [4, 0]]
    with pytest.raises(ConfigError, match=r"models\[tiny-gpt2\]\.heads: tiny-gpt2 has no L4H0"):
        check_run(config, model_entries(config))


def test_head_out_of_range_of_a_known_hub_model_names_the_key():
    """The paper's hub models have known sizes, so their heads are checked before any job."""
    config = demo_config()
    config["models"].append({"name": "pythia-160m", "heads": [[11, 11], [12, 0]]})
    with pytest.raises(
        ConfigError, match=r"models\[pythia-160m\]\.heads: pythia-160m has no L12H0"
    ):
        check_run(config, model_entries(config))
    config["models"][-1]["heads"] = [[11, 11]]
    check_run(config, model_entries(config))


def test_unreadable_corpus_file_names_the_key(tmp_path):
    config = demo_config()
    text = tmp_path / "a.txt"
    text.write_text("some text")
    config["data"]["corpus"] = {"source": "text_files", "files": [str(text), str(tmp_path)]}
    with pytest.raises(ConfigError, match=r"data\.corpus\.files\[1\]: .* is not a file"):
        check_run(config, model_entries(config))
    config["data"]["corpus"]["files"] = [str(text)]
    check_run(config, model_entries(config))
    config["tokenizers"]["stdlib-bpe"]["corpus"] = {
        "source": "text_files",
        "files": [str(tmp_path / "missing.txt")],
    }
    with pytest.raises(
        ConfigError, match=r"tokenizers\.stdlib-bpe\.corpus\.files\[0\]: .* does not exist"
    ):
        check_run(config, model_entries(config))


def test_loaded_model_checked_against_seq_len_and_heads(tokens, checkpoint, tmp_path):
    model = pipeline.model_for({"name": "tiny"}, checkpoint, "cpu", "float32", seq_len=N_CTX)
    with pytest.raises(ConfigError, match=r"data\.seq_len: 18 tokens .* at most 17"):
        pipeline.check_model_fits(model, {"name": "tiny"}, 18)
    entry = {"name": "tiny", "heads": [[0, 1], [2, 0]]}
    with pytest.raises(ConfigError, match=r"models\[tiny\]\.heads: tiny has no L2H0"):
        ablate(tokens, checkpoint, tmp_path / "out.zarr", entry=entry)
    assert not (tmp_path / "out.zarr").exists()


# --- job failures -----------------------------------------------------------------------------


def test_out_of_memory_names_the_config_keys_and_writes_nothing(
    tokens, checkpoint, tmp_path, monkeypatch
):
    def oom(*args, **kwargs):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    monkeypatch.setattr(pipeline, "measure_heads", oom)
    with pytest.raises(MemoryError, match=r"lower engine\.batch_size \(now 4\) or engine\."):
        ablate(tokens, checkpoint, tmp_path / "out.zarr")
    assert not (tmp_path / "out.zarr").exists()


def test_cpu_allocation_failure_is_out_of_memory_and_other_errors_pass():
    with pytest.raises(MemoryError, match=r"engine\.batch_size \(now 8\)"):
        with pipeline.memory_hint("cpu", {"engine.batch_size": 8}):
            raise RuntimeError(
                "[enforce fail at alloc_cpu.cpp] DefaultCPUAllocator: can't allocate memory"
            )
    with pytest.raises(RuntimeError, match="shape mismatch"):
        with pipeline.memory_hint("cpu", {"engine.batch_size": 8}):
            raise RuntimeError("shape mismatch")


def test_nan_names_layer_row_and_shard(tokens, checkpoint, tmp_path, monkeypatch):
    load = pipeline.load_model

    def poisoned(*args, **kwargs):
        model = load(*args, **kwargs)
        with torch.no_grad():
            model.blocks[1].attn.W_V[0, 0, 0] = float("inf")
        return model

    monkeypatch.setattr(pipeline, "load_model", poisoned)
    with pytest.raises(NonFiniteActivation, match=r"after layer 1 .*shard rows 4\.\.7 of"):
        ablate(tokens, checkpoint, tmp_path / "out.zarr", bounds=(4, 8))
    assert not (tmp_path / "out.zarr").exists()


# --- determinism and provenance -----------------------------------------------------------------


def test_reruns_are_bit_identical_and_record_provenance(tokens, checkpoint, tmp_path):
    a = ablate(tokens, checkpoint, tmp_path / "a.zarr")
    b = ablate(tokens, checkpoint, tmp_path / "b.zarr")
    for name in HEAD_VARIABLES:
        assert np.array_equal(a[name].values, b[name].values, equal_nan=True), name
    read = store.open_zarr(tmp_path / "a.zarr", variables=HEAD_VARIABLES)
    for name in HEAD_VARIABLES:
        assert np.array_equal(read[name].values, a[name].values, equal_nan=True), name
    attrs = read.attrs
    assert attrs["seed"] == 0 and attrs["data"] == {"seq_len": N_CTX}
    assert attrs["model_revision"].startswith("sha256:") and len(attrs["model_revision"]) == 71
    assert {"torch", "transformer-lens", "python", "selfrepair"} <= set(attrs["versions"])
    assert read.resample_source.values.tolist() == [1, 2, 3, 4, 5, 6, 7, 0]


def test_model_revision_follows_the_weights_and_the_hub_cache(checkpoint, tmp_path, monkeypatch):
    copy = tmp_path / "copy"
    shutil.copytree(checkpoint, copy)
    assert pipeline.model_revision("x", str(copy)) == pipeline.model_revision("x", checkpoint)
    weights = copy / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 1
    weights.write_bytes(bytes(data))
    assert pipeline.model_revision("x", str(copy)) != pipeline.model_revision("x", checkpoint)
    # The hub path: the snapshot the Hugging Face cache resolves "main" to.
    cache = tmp_path / "hub"
    repo = cache / "models--EleutherAI--pythia-160m"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text("50f5173d932e8e61f858120bcb800b97af589f46")
    snapshot = repo / "snapshots" / "50f5173d932e8e61f858120bcb800b97af589f46"
    snapshot.mkdir(parents=True)
    (snapshot / "config.json").write_text(json.dumps({"model_type": "gpt_neox"}))
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_CACHE", str(cache))
    assert pipeline.model_revision("pythia-160m", None) == snapshot.name
    assert pipeline.model_revision("gpt2-small", None) == "unknown"
