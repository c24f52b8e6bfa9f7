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

import selfrepair.stages.ablation as ablation_stage
import selfrepair.stages.job as job
import selfrepair.stages.joblog as joblog
import selfrepair.stages.store as store
from selfrepair.config import ConfigError, check_run, model_entries
from selfrepair.models.builders import build_model
from selfrepair.models.forward import NonFiniteActivation
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


def ablate(tokens, checkpoint, out, bounds=(0, 8), entry=None):
    model_job = job.ModelJob(
        tokens=tokens,
        shards=bounds,
        entry=entry or {"name": "tiny"},
        checkpoint=checkpoint,
        device="cpu",
        dtype="float32",
        batch_size=4,
    )
    return ablation_stage.ablate(
        model_job,
        ablation="resample",
        heads_per_pass=4,
        mean_include_bos=True,
        out=str(out),
        attrs={"seed": 0, "data": {"seq_len": N_CTX}},
    )


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
        job.read_token_rows(str(tmp_path / "s.zarr"), 0, 1)


def test_store_with_a_lost_chunk_is_refused(tmp_path):
    small_store(tmp_path / "s.zarr")
    (tmp_path / "s.zarr" / "x" / "1.0").unlink()
    with pytest.raises(ValueError, match=r"damaged: array x lacks chunk files 1\.0 \(2 of its 3"):
        store.open_zarr(tmp_path / "s.zarr")


def test_store_with_garbled_metadata_is_refused(tmp_path):
    small_store(tmp_path / "s.zarr")
    (tmp_path / "s.zarr" / ".zmetadata").write_text("{not json")
    with pytest.raises(
        ValueError, match=r"damaged: its consolidated metadata .zmetadata is missing"
    ):
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


# --- point by point: each mistake in one line naming the key and the fix, before any job -----


def checked(config: dict) -> str:
    """The one-line ConfigError that check_run and the mechanism targets give for config."""
    from selfrepair.config.mechanisms import mechanism_targets

    with pytest.raises(ConfigError) as info:
        check_run(config, model_entries(config))
        mechanism_targets(config)
    message = str(info.value)
    assert "\n" not in message
    return message


def test_shipped_shard_layouts_are_unchanged_and_far_below_the_cap():
    """The cap changes only extreme configs: the demo keeps 2 shards, the paper 8."""
    from selfrepair.config import MAX_SHARDS, n_shards

    paper = yaml.safe_load((ROOT / "config" / "config.yaml").read_text())
    assert n_shards(demo_config()["data"]) == 2 and n_shards(paper["data"]) == 8 < MAX_SHARDS


def test_too_many_shards_name_n_tokens_and_shard_rows_with_the_size_that_fits():
    from selfrepair.config import MAX_SHARDS, n_shards

    config = demo_config()
    config["data"].update(n_tokens=1_000_000_000, shard_rows=1024)
    assert checked(config) == (
        "config key data.n_tokens: 1,000,000,000 tokens make 7,630 shards of "
        "data.shard_rows=1024 rows per model, more than 256 (one job each per ablation; "
        "planning them would take minutes and gigabytes); raise data.shard_rows to at least "
        "30518 or lower data.n_tokens"
    )
    config["data"]["shard_rows"] = 30518  # ceil(7,812,500 rows / 256)
    assert n_shards(config["data"]) == MAX_SHARDS
    check_run(config, model_entries(config))


def test_half_precision_on_an_explicit_cpu_names_dtype():
    config = demo_config()
    config.update(device="cpu", dtype="bfloat16")
    assert checked(config) == (
        "config key dtype: bfloat16 runs only on CUDA and device is cpu; set dtype: float32 "
        "(or device: cuda on a machine with a GPU)"
    )


@pytest.mark.parametrize(
    "device, dtype, n_cuda, expected",
    [
        ("cuda", "float32", 0, "config key device: cuda was asked for but this machine has no "
         "CUDA device; set device: auto (or cpu)"),
        ("cuda:2", "float32", 2, "config key device: cuda:2 was asked for but this machine has 2 "
         "CUDA device(s); set device: cuda:0 .. cuda:1 or auto"),
        ("auto", "float16", 0, "config key dtype: float16 runs only on CUDA and this machine has "
         "no CUDA device; set dtype: float32"),
        ("cpu", "bfloat16", 4, "config key dtype: bfloat16 runs only on CUDA and device is cpu; "
         "set dtype: float32"),
        ("cuda:1", "bfloat16", 2, None),
        ("auto", "bfloat16", 1, None),
        ("cpu", "float32", 0, None),
    ],
)  # fmt: skip
def test_device_and_dtype_against_the_machine(device, dtype, n_cuda, expected):
    from selfrepair.config import device_problem

    assert device_problem(device, dtype, n_cuda) == expected


def test_model_load_fails_in_the_same_line_as_the_workflow_start():
    """On a cluster node (no check at the workflow's start) the job's model load says it."""
    from selfrepair.config import device_problem
    from selfrepair.models.loading import resolve_device

    device = f"cuda:{torch.cuda.device_count()}"  # one past this machine's last device
    with pytest.raises(ConfigError) as info:
        resolve_device(device)
    n_cuda = torch.cuda.device_count() if torch.cuda.is_available() else 0
    assert str(info.value) == device_problem(device, "float32", n_cuda)


def test_heads_that_do_not_divide_d_model_name_the_key():
    config = demo_config()
    config["models"][1]["train"]["n_heads"] = 3
    assert checked(config) == (
        "config key models[tiny-pythia].train.n_heads: 3 heads do not divide train.d_model "
        "128; choose n_heads that divides d_model (e.g. 4 for 128)"
    )


def test_missing_path_or_config_json_names_the_key(tmp_path):
    config = demo_config()
    config["models"].append({"name": "mine", "path": str(tmp_path / "nowhere")})
    fix = "point it at a Hugging Face checkpoint directory (save_pretrained output)"
    assert checked(config) == (
        f"config key models[mine].path: {str(tmp_path / 'nowhere')!r} does not exist; {fix}"
    )
    config["models"][-1]["path"] = str(tmp_path)
    assert (
        checked(config)
        == f"config key models[mine].path: {str(tmp_path)!r} has no config.json; {fix}"
    )


def test_non_causal_checkpoint_names_the_model_and_reason(tmp_path):
    (tmp_path / "config.json").write_text(
        json.dumps({"architectures": ["BertForMaskedLM"], "model_type": "bert"})
    )
    config = demo_config()
    config["models"].append({"name": "bert", "path": str(tmp_path)})
    assert checked(config) == (
        f"config key models[bert].path: {str(tmp_path)!r} is a BertForMaskedLM (bert) "
        "checkpoint, not a causal language model; self-repair is measured on decoder-only LMs "
        "(GPT-2, Pythia, Llama, ...)"
    )


def test_empty_corpus_files_name_the_key():
    config = demo_config()
    config["data"]["corpus"] = {"source": "text_files", "files": []}
    assert checked(config) == (
        "config key data.corpus.files: empty; list the plain-text or .jsonl files of the corpus "
        "(or set data.corpus.source to hub or python_stdlib)"
    )


def test_frozen_ln_of_an_ablation_not_run_names_engine_frozen_ln():
    config = demo_config()
    config["ablations"] = ["mean"]
    assert checked(config) == (
        "config key engine.frozen_ln[0]: resample is not among ablations ['mean']; add it to "
        "ablations or drop it from engine.frozen_ln (engine.frozen_ln: [] runs none)"
    )
    config["engine"]["frozen_ln"] = ["mean"]
    check_run(config, model_entries(config))


def test_mlp_layer_out_of_range_names_mechanisms_neurons_mlp_layer():
    config = demo_config()
    config["mechanisms"]["neurons"]["mlp_layer"] = 10
    assert checked(config) == (
        "config key mechanisms.neurons.mlp_layer: tiny-pythia has no MLP layer 10 (4 layers); "
        "use -4 .. 3"
    )


def test_a_head_listed_twice_fails_naming_the_key():
    config = demo_config()
    fig08 = config["mechanisms"]["neurons"]["fig08"]
    # Literal heads (the demo picks its substitutes at run time; a pick clash is test_substitutes')
    fig08[1]["substitute"] = {"model": "tiny-pythia", "heads": [[2, 3]]}
    fig08[2]["substitute"] = {"model": "tiny-pythia", "heads": [[2, 3]]}
    assert checked(config) == (
        "config key mechanisms.neurons.fig08[2]: tiny-pythia L2H3 is already shown by "
        "mechanisms.neurons.fig08[1]; give each entry another head or remove one"
    )
    config = demo_config()
    config["mechanisms"]["norms"]["fig16_18"]["substitute"]["heads"] = [[3, 2], [3, 2]]
    assert checked(config) == (
        "config key mechanisms.norms.fig16_18.substitute.heads: L3H2 is listed twice; list it once"
    )
    config = demo_config()
    config["models"][0]["heads"] = [[1, 0], [1, 0]]
    assert (
        checked(config) == "config key models[tiny-gpt2].heads: L1H0 is listed twice; list it once"
    )


# Each workflow-level check stops `snakemake -n` within seconds, before any job, in its line.
BERT = {"architectures": ["BertForMaskedLM"], "model_type": "bert"}


@pytest.mark.slow  # starts Snakemake: about 3 s each
@pytest.mark.parametrize(
    "overlay, line",
    [
        ({"data": {"n_tokens": 1_000_000_000}}, "config key data.n_tokens: 1,000,000,000 tokens"),
        ({"device": "cpu", "dtype": "float16"}, "config key dtype: float16 runs only on CUDA"),
        ({"ablations": ["mean"]}, "config key engine.frozen_ln[0]: resample is not among"),
        ({"data": {"corpus": {"source": "text_files", "files": []}}}, "config key data.corpus.files: empty"),
        ({"models": [{"name": "b", "path": "BERT"}]}, "config key models[b].path: 'BERT' is a BertForMaskedLM"),
        ({"models": [{"name": "b", "path": "nowhere"}]}, "config key models[b].path: 'nowhere' does not exist"),
        ({"models": [{"name": "b", "path": "BERT", "train": {"arch": "gpt2", "tokenizer": "stdlib-bpe"}}]},
         "config key models[0]: has both path and train; keep path"),
        ({"mechanisms": {"neurons": {"mlp_layer": 10}}}, "config key mechanisms.neurons.mlp_layer: "),
        ({"mechanisms": {"neurons": {"fig08": [{"model": "tiny-gpt2", "heads": [[3, 2]]}] * 2}}},
         "config key mechanisms.neurons.fig08[1]: tiny-gpt2 L3H2 is already shown"),
    ],
)  # fmt: skip
def test_snakemake_dry_run_stops_at_once_naming_the_key(tmp_path, overlay, line):
    (tmp_path / "BERT").mkdir()
    (tmp_path / "BERT" / "config.json").write_text(json.dumps(BERT))
    out, seconds = run_snakemake(tmp_path, overlay, "-n")
    assert any(row.startswith(line) for row in out.splitlines()), out[-2000:]
    assert seconds < 60


@pytest.mark.slow  # starts Snakemake: about 3 s each
def test_local_run_on_a_machine_without_the_device_stops_before_the_first_job(tmp_path):
    """device and dtype are checked against this machine once Snakemake knows the jobs run here
    (a dry run cannot know: on SLURM the nodes' hardware counts)."""
    device = f"cuda:{torch.cuda.device_count()}"  # one past this machine's last device
    out, seconds = run_snakemake(tmp_path, {"device": device}, "--cores", "1")
    assert any(
        row.startswith(f"config key device: {device} was asked for") for row in out.splitlines()
    ), out[-2000:]
    assert (
        seconds < 60
        and not (tmp_path / "results").exists()
        and not (tmp_path / "resources").exists()
    )


def run_snakemake(workdir: Path, overlay: dict, *args: str) -> tuple[str, float]:
    """Snakemake on the demo config plus overlay, in workdir; (stdout + stderr, seconds)."""
    import subprocess
    import sys
    import time

    extra = workdir / "overlay.yaml"
    extra.write_text(yaml.safe_dump(overlay))
    start = time.monotonic()
    proc = subprocess.run(
        [sys.executable, "-m", "snakemake", *args, "--snakefile", str(ROOT / "workflow" / "Snakefile"),
         "--directory", str(workdir), "--configfile", str(ROOT / "config" / "demo.yaml"), str(extra)],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode != 0
    return proc.stdout + proc.stderr, time.monotonic() - start


def test_loaded_model_checked_against_seq_len_and_heads(tokens, checkpoint, tmp_path):
    model = job.model_for({"name": "tiny"}, checkpoint, "cpu", "float32", seq_len=N_CTX)
    with pytest.raises(ConfigError, match=r"data\.seq_len: 18 tokens .* at most 17"):
        job.check_model_fits(model, {"name": "tiny"}, 18)
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

    monkeypatch.setattr(ablation_stage, "measure_heads", oom)
    with pytest.raises(MemoryError, match=r"lower engine\.batch_size \(now 4\) or engine\."):
        ablate(tokens, checkpoint, tmp_path / "out.zarr")
    assert not (tmp_path / "out.zarr").exists()


def test_cpu_allocation_failure_is_out_of_memory_and_other_errors_pass():
    with pytest.raises(MemoryError, match=r"engine\.batch_size \(now 8\)"):
        with job.memory_hint("cpu", {"engine.batch_size": 8}):
            raise RuntimeError(
                "[enforce fail at alloc_cpu.cpp] DefaultCPUAllocator: can't allocate memory"
            )
    with pytest.raises(RuntimeError, match="shape mismatch"):
        with job.memory_hint("cpu", {"engine.batch_size": 8}):
            raise RuntimeError("shape mismatch")


def test_nan_names_layer_row_and_shard(tokens, checkpoint, tmp_path, monkeypatch):
    load = job.load_model

    def poisoned(*args, **kwargs):
        model = load(*args, **kwargs)
        with torch.no_grad():
            model.blocks[1].attn.W_V[0, 0, 0] = float("inf")
        return model

    monkeypatch.setattr(job, "load_model", poisoned)
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
    assert joblog.model_revision("x", str(copy)) == joblog.model_revision("x", checkpoint)
    weights = copy / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 1
    weights.write_bytes(bytes(data))
    assert joblog.model_revision("x", str(copy)) != joblog.model_revision("x", checkpoint)
    # The hub path: the snapshot the Hugging Face cache resolves "main" to.
    cache = tmp_path / "hub"
    repo = cache / "models--EleutherAI--pythia-160m"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text("50f5173d932e8e61f858120bcb800b97af589f46")
    snapshot = repo / "snapshots" / "50f5173d932e8e61f858120bcb800b97af589f46"
    snapshot.mkdir(parents=True)
    (snapshot / "config.json").write_text(json.dumps({"model_type": "gpt_neox"}))
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_CACHE", str(cache))
    assert joblog.model_revision("pythia-160m", None) == snapshot.name
    assert joblog.model_revision("gpt2-small", None) == "unknown"
