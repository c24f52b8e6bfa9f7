"""Training checkpoints (selfrepair.config.checkpoints): the config's checkpoint keys and their
checks, intermediate checkpoints kept by training without changing the final weights, the
loader's arguments for a hub revision, the job's weights and provenance, the training curves
against hand computations and the training figure."""

from __future__ import annotations

import copy
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import xarray as xr
import yaml
from helpers import ROOT, load, load_file, merged, reduced_demo_config, rule_script, rule_texts_of

import selfrepair.config as sr_config
from selfrepair.analysis.training import checkpoint_layers, mean_loss, training_curves
from selfrepair.config.checkpoints import PYTHIA_FINAL_STEP, PYTHIA_STEPS
from selfrepair.config.figures import run_figures
from selfrepair.plots.training import PANELS
from selfrepair.plots.training import training_self_repair as draw_training
from selfrepair.stages import training as stage_training
from selfrepair.stages.job import ModelJob, checkpoint_folder

DEMO = merged(load("config.yaml"), load("demo.yaml"))


def _validated(models: list) -> dict:
    """The demo with these models, its task measuring them all (it names the demo's own)."""
    config = copy.deepcopy(DEMO)
    config["models"] = models
    for spec in config["tasks"].values():
        spec.pop("models", None)
    return sr_config.validate_run(config)


def _error(models: list) -> str:
    with pytest.raises(sr_config.ConfigError) as info:
        _validated(models)
    message = str(info.value)
    assert "\n" not in message
    return message


# --- config --------------------------------------------------------------------------------------


def test_pythia_steps_are_transformer_lens_own():
    from transformer_lens.loading_from_pretrained import PYTHIA_CHECKPOINTS

    assert list(PYTHIA_STEPS) == PYTHIA_CHECKPOINTS
    assert PYTHIA_FINAL_STEP == PYTHIA_CHECKPOINTS[-1]


def test_the_demo_models_checkpoints_are_model_keys_of_their_own():
    run = sr_config.validate_run(merged(DEMO, {}))
    entries = sr_config.text_models(run)  # induction-pythia (tasks_only) keeps no checkpoints
    ckpts = sr_config.checkpoint_models(entries)
    assert list(entries) == ["tiny-gpt2", "tiny-pythia"]  # the models themselves, unchanged
    assert list(run) == [*entries, "induction-pythia"]
    assert set(ckpts) == {f"{m}@step{s}" for m in entries for s in (0, 50, 200)}
    entry = ckpts["tiny-gpt2@step50"]
    assert entry["checkpoint"] == {"model": "tiny-gpt2", "step": 50, "subdir": "checkpoints/step50"}
    assert "train" not in entry  # never trained again: its weights are the model's, kept
    steps = sr_config.checkpoint_steps("tiny-pythia", entries["tiny-pythia"])
    assert steps[-1] == ("tiny-pythia", 600)  # the final checkpoint is the model's own key
    assert [s for _, s in steps] == [0, 50, 200, 600]


def test_hub_revisions_and_local_checkpoints(tmp_path):
    for name in ("a", "b"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "config.json").write_text(
            json.dumps({"architectures": ["GPTNeoXForCausalLM"], "model_type": "gpt_neox"})
        )
        (tmp_path / name / "tokenizer.json").write_text("{}")  # a path folder needs one
    local = {
        "name": "mine",
        "path": str(tmp_path / "b"),
        "step": 900,
        "checkpoints": [{"step": 300, "path": str(tmp_path / "a")}],
    }
    pythia = {"name": "pythia-160m", "revisions": ["step1000", "step0"], "heads": [[1, 2]]}
    pythia["resources"] = {"mem_mb": 24000}
    entries = _validated([pythia, local])
    ckpts = sr_config.checkpoint_models(entries)
    assert ckpts["pythia-160m@step0"]["checkpoint"]["revision"] == "step0"
    # a checkpoint's jobs measure the model's heads with its resources (SLURM: separate jobs)
    assert ckpts["pythia-160m@step0"]["heads"] == [[1, 2]]
    assert sr_config.model_resources(DEMO, ckpts["pythia-160m@step0"])["mem_mb"] == 24000
    assert ckpts["mine@step300"]["checkpoint"]["path"] == str(tmp_path / "a")
    assert sr_config.checkpoint_steps("pythia-160m", entries["pythia-160m"]) == [
        ("pythia-160m@step0", 0),
        ("pythia-160m@step1000", 1000),
        ("pythia-160m", 143000),
    ]


@pytest.mark.parametrize(
    ("entry", "expected"),
    [
        ({"name": "pythia-160m", "revisions": ["step7"]}, "models[pythia-160m].revisions: 'step7'"),
        ({"name": "pythia-160m", "revisions": ["main"]}, "models[pythia-160m].revisions: 'main'"),
        ({"name": "pythia-160m", "revisions": ["step01000"]}, "revisions: 'step01000'"),
        ({"name": "gpt2-small", "revisions": ["step1000"]}, "models[gpt2-small].revisions: only"),
        (
            {"name": "pythia-70m", "checkpoints": [{"step": 1, "path": "/no"}]},
            "models[pythia-70m].checkpoints[0].path: '/no' does not",
        ),
        ({"name": "pythia-160m", "checkpoints": [{"step": 1, "path": "."}]}, "has no config.json"),
    ],
)
def test_bad_revisions_and_paths_fail_naming_the_key(entry, expected):
    assert expected in _error([entry])


def test_steps_must_be_known_distinct_and_before_the_final(tmp_path):
    (tmp_path / "config.json").write_text(
        json.dumps({"architectures": ["GPT2LMHeadModel"], "model_type": "gpt2"})
    )
    (tmp_path / "tokenizer.json").write_text("{}")  # a path folder needs one
    ckpt = {"step": 5, "path": str(tmp_path)}
    message = _error([{"name": "m", "path": str(tmp_path), "checkpoints": [ckpt]}])
    assert "config key models[m].step" in message
    message = _error([{"name": "m", "path": str(tmp_path), "step": 4, "checkpoints": [ckpt]}])
    assert "config key models[m]: checkpoint step 5 is after the final step 4" in message
    twice = [
        {"name": "pythia-160m", "revisions": ["step1000"], "checkpoints": [ckpt | {"step": 1000}]}
    ]
    assert "two checkpoints share a step" in _error(twice)
    train = dict(DEMO["models"][0]["train"], keep_steps=[0, 700])
    assert "after the final step 600" in _error([{"name": "t", "train": train}])


def test_a_model_without_checkpoints_has_none():
    entries = _validated([{"name": "pythia-160m"}, "gpt2-small"])
    assert sr_config.checkpoint_models(entries) == {}
    assert sr_config.checkpoint_steps("gpt2-small", entries["gpt2-small"]) == []


def test_snakemake_dry_run_stops_on_a_bad_revision_before_any_job(tmp_path):
    config = tmp_path / "bad.yaml"
    config.write_text(yaml.safe_dump({"models": [{"name": "pythia-160m", "revisions": ["step3"]}]}))
    proc = subprocess.run(
        [sys.executable, "-m", "snakemake", "-n", "--cores", "1", "--configfile", str(config)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode != 0
    assert "config key models[pythia-160m].revisions: 'step3' is not a Pythia revision" in (
        proc.stdout + proc.stderr
    )
    assert "rule " not in proc.stdout  # no job was planned to run


def test_hub_check_names_a_missing_revision(tmp_path, monkeypatch):
    from huggingface_hub import constants

    sys.path.insert(0, str(ROOT / "tools"))
    import offline_hub

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    files = tmp_path / "files"
    files.mkdir()
    for name in ("config.json", "model.safetensors", "tokenizer.json"):
        (files / name).write_text(f'{{"{name}": 0}}')
    (tmp_path / "hub").mkdir()
    offline_hub.write_snapshot(tmp_path / "hub", "EleutherAI/pythia-160m", "model", files)
    config = merged(DEMO, {})
    config["models"] = [{"name": "pythia-160m", "revisions": ["step1000"]}]
    entries = sr_config.model_entries(config)
    needs = sr_config.hub_needs(config, entries)
    assert needs == [
        "model pythia-160m revision step1000 (EleutherAI/pythia-160m, config key "
        "models[pythia-160m].revisions)"
    ]
    files = tmp_path / "revision"
    files.mkdir()
    for name in ("config.json", "model.safetensors"):
        (files / name).write_text(f'{{"{name}": 1000}}')
    offline_hub.write_snapshot(
        tmp_path / "hub", "EleutherAI/pythia-160m", "model", files, "step1000"
    )
    assert sr_config.hub_needs(config, entries) == []


def test_the_reduced_demo_keeps_checkpoints_at_its_size():
    reduced = reduced_demo_config()
    demo = load("demo.yaml")
    assert reduced["checkpoint_shards"] == demo["checkpoint_shards"] == 1
    text = [m for m in demo["models"] if not m.get("tasks_only")]  # the reduced demo's models
    for small, big in zip(reduced["models"], text, strict=True):
        assert big["train"]["keep_steps"] == [0, 50, 200]
        assert small["train"]["keep_steps"] == [0, 50, 200]
        assert max(small["train"]["keep_steps"]) < small["train"]["steps"]


# --- training keeps checkpoints without changing the final weights ---------------------------------


def _train(kept: dict | None = None, steps: int = 6):
    """A tiny Pythia-style model trained on random rows; kept: filled with the weights after
    every step (step 0: before the first) when given."""
    from selfrepair.data.training import train_causal_lm
    from selfrepair.models.builders import build_model

    rows = np.random.default_rng(0).integers(3, 60, size=(40, 17))
    model = build_model("pythia", 64, 2, 32, 4, 16, seed=1, bos_id=0, eos_id=1)

    def keep(step):
        kept[step] = {k: v.detach().clone() for k, v in model.state_dict().items()}

    train_causal_lm(model, rows[:32], rows[32:], steps=steps, batch_size=8, lr=0.01, seed=2,
                    progress=False, keep=None if kept is None else keep)  # fmt: skip
    return model


def test_keeping_checkpoints_leaves_the_final_weights_bit_for_bit():
    plain, kept = _train(), {}
    keeping = _train(kept)
    for name, value in plain.state_dict().items():
        assert torch.equal(value, keeping.state_dict()[name]), name
    assert sorted(kept) == list(range(7))  # step 0 (before any update) to the last
    weight = "gpt_neox.layers.0.attention.query_key_value.weight"
    # the weights kept after step 1 are a one-step training's (warmup: the same lr at step 0)
    assert torch.equal(kept[1][weight], _train(steps=1).state_dict()[weight])
    assert not torch.equal(kept[0][weight], kept[1][weight])
    assert torch.equal(kept[6][weight], plain.state_dict()[weight])


def test_kept_checkpoints_are_saved_inside_the_model_folder(tmp_path):
    from transformers import AutoTokenizer  # noqa: F401  (the stage saves a real tokenizer)

    from selfrepair.data.tokenizer import train_tokenizer
    from selfrepair.stages.data import _kept_checkpoints

    docs = ["def f(x):\n    return x + 1\n" * 3, "class A:\n    pass\n" * 4]
    tokenizer = train_tokenizer(docs, 300, tmp_path / "tok")
    model = _train()
    out = tmp_path / "models" / "m"
    from selfrepair.data.training import save_checkpoint

    with _kept_checkpoints(model, tokenizer, out, [0, 3, 6], 6) as (keep, kept):
        keep(0), keep(3), keep(4), keep(6)
        save_checkpoint(model, tokenizer, {"steps": 6}, out, kept=kept)
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["step0", "step3"]
    assert (out / "model.safetensors").is_file() and (
        out / "checkpoints/step3/config.json"
    ).is_file()
    assert not list((tmp_path / "models").glob(".m-kept-*"))  # the staging folder is gone
    with _kept_checkpoints(model, tokenizer, out, [6], 6) as (keep, kept):
        assert keep is None and kept is None  # the last step is the model itself


# --- loading and the job ----------------------------------------------------------------------------


def test_a_hub_revision_goes_through_transformer_lens_checkpoint_support(monkeypatch):
    from transformer_lens import HookedTransformer

    from selfrepair.models import loading
    from selfrepair.models.builders import random_model

    calls = []

    def fake(name, **kwargs):  # a loaded model, as load_model keeps its folded value biases
        calls.append((name, kwargs))
        return random_model("pythia", n_layers=1, d_model=8, n_heads=2, d_vocab=11, n_ctx=8)

    monkeypatch.setattr(HookedTransformer, "from_pretrained", staticmethod(fake))
    loading.load_model("pythia-160m", revision="step1000")
    name, kwargs = calls[0]
    assert name == "pythia-160m" and kwargs["checkpoint_value"] == 1000
    assert kwargs["fold_ln"] and kwargs["center_writing_weights"] and kwargs["center_unembed"]
    with pytest.raises(ValueError, match="step<N>"):
        loading.load_model("pythia-160m", revision="main")


def test_the_job_loads_a_checkpoint_and_records_its_step(tmp_path, monkeypatch):
    from selfrepair.stages import job as job_module
    from selfrepair.stages import joblog

    trained = {"checkpoint": {"model": "tiny", "step": 50, "subdir": "checkpoints/step50"}}
    assert checkpoint_folder(trained, "resources/models/tiny") == str(
        Path("resources/models/tiny/checkpoints/step50")
    )
    assert checkpoint_folder({"name": "tiny"}, "resources/models/tiny") == "resources/models/tiny"
    hub = {"name": "pythia-160m@step1000", "checkpoint": {"model": "pythia-160m", "step": 1000,
                                                          "revision": "step1000"}}  # fmt: skip
    loads = []
    monkeypatch.setattr(job_module, "load_model", lambda *a, **k: loads.append((a, k)) or None)
    monkeypatch.setattr(job_module, "check_model_fits", lambda *a: None)
    monkeypatch.setattr(joblog, "hub_revision", lambda name, rev: f"commit-of-{name}-{rev}")

    class Cfg:
        n_layers = n_heads = 1

    monkeypatch.setattr(job_module.log, "info", lambda *a: None)
    job = ModelJob("tokens.zarr", hub, 4)
    with pytest.raises(AttributeError):  # the fake model is None; the load call is what counts
        job.model()
    (args, kwargs) = loads[0]
    assert args == ("pythia-160m",) and kwargs["revision"] == "step1000"
    attrs = job.provenance({"model": hub["name"]})
    assert attrs["model_revision"] == "commit-of-pythia-160m-step1000"
    assert attrs["checkpoint_step"] == 1000 and attrs["checkpoint_revision"] == "step1000"
    assert attrs["checkpoint_of"] == "pythia-160m"


def test_a_checkpoints_processed_weights_are_its_models_subfolder():
    from selfrepair.stages.joblog import checkpoint_weights

    trained = {"checkpoint": {"model": "tiny", "step": 50, "subdir": "checkpoints/step50"}}
    folder = "resources/weights/tiny"
    assert checkpoint_weights(trained, folder) == str(Path(folder) / "checkpoints" / "step50")
    assert checkpoint_weights({"name": "tiny"}, folder) == folder
    assert checkpoint_weights(trained, None) is None  # loaded through TransformerLens


def test_one_process_weights_job_per_model_serves_its_checkpoints(finished_run):
    """The model's one process_weights job wrote each checkpoint's weights, made from that
    checkpoint's folder (its recorded source), and every checkpoint job read them: none loaded
    a checkpoint through TransformerLens."""
    from selfrepair.models.processed import read_processed
    from selfrepair.stages.job import weights_source

    run, configs = finished_run
    config = merged(*(load_file(c) for c in configs))
    entries = sr_config.checkpoint_models({m["name"]: m for m in config["models"]})
    assert entries
    for key, entry in entries.items():
        owner, step = entry["checkpoint"]["model"], entry["checkpoint"]["step"]
        folder = run / "resources" / "weights" / owner / "checkpoints" / f"step{step}"
        source = weights_source(
            entry, checkpoint_folder(entry, str(run / "resources/models" / owner))
        )
        read_processed(folder, source)  # refused unless made from this checkpoint's weights
        logs = list((run / "results" / "logs").glob(f"*/{key}/**/*.log"))
        assert {p.relative_to(run / "results" / "logs").parts[0] for p in logs} >= {
            "clean_cache",
            "checkpoint_ablate",
        }, key
        for log in logs:
            text = log.read_text()
            assert "read the processed weights of " + key in text, log
            assert "loaded " + key not in text, log
    assert not (run / "resources" / "weights" / next(iter(entries))).exists()


# --- curves and figure -------------------------------------------------------------------------------


def _summary(values: np.ndarray, share: np.ndarray) -> xr.Dataset:
    """A per-head summary (layer, head) with the variables the curves read."""
    dims = ("layer", "head")
    data = {f"top_{p}": (dims, values * (i + 1)) for i, p in enumerate(
        ("self_repair", "sr_heads", "sr_mlps", "sr_ln"))}  # fmt: skip
    data["top_ln_share_clipped"] = (dims, share)
    return xr.Dataset(data)


def test_training_curves_are_layer_means_of_the_summaries():
    a = np.array([[1.0, 3.0], [np.nan, 2.0]])  # an unmeasured head is skipped
    b = np.array([[0.0, 0.5], [4.0, 6.0]])
    curves = training_curves({600: _summary(b, b / 10), 0: _summary(a, a / 10)}, {0: 8.3, 600: 4.1})
    assert list(curves.step.values) == [0, 600]
    np.testing.assert_allclose(curves.self_repair.sel(step=0).values, [2.0, 2.0])
    np.testing.assert_allclose(curves.sr_mlps.sel(step=600).values, [0.75, 15.0])
    np.testing.assert_allclose(curves.ln_share_clipped.sel(step=600).values, [0.025, 0.5])
    np.testing.assert_allclose(curves.loss.values, [8.3, 4.1])
    assert set(checkpoint_layers(_summary(a, a)).data_vars) == {
        "self_repair", "sr_heads", "sr_mlps", "sr_ln", "ln_share_clipped"}  # fmt: skip
    with pytest.raises(ValueError, match="steps differ"):
        training_curves({0: _summary(a, a)}, {1: 1.0})


def test_mean_loss_is_the_float64_mean():
    loss = xr.DataArray(np.full((3, 1000), 0.1, np.float32))
    assert mean_loss(loss) == pytest.approx(float(np.float32(0.1)), rel=1e-12)
    with pytest.raises(ValueError, match="NaN"):
        mean_loss(xr.DataArray(np.array([1.0, np.nan])))


def test_the_training_figure_has_a_row_of_panels_per_model_on_a_symlog_step_axis():
    a = np.array([[1.0, 3.0], [0.5, 2.0]])
    curves = {
        m: training_curves(
            {s: _summary(a * s, a / 10) for s in (0, 50, 600)}, {0: 8.0, 50: 6.0, 600: 4.0}
        )  # fmt: skip
        for m in ("tiny-gpt2", "tiny-pythia")
    }
    fig = draw_training(curves)
    assert len(fig.axes) == 2 * len(PANELS)
    for ax in fig.axes:
        assert ax.get_xscale() == "symlog"
        assert list(ax.get_xticks()) == [0, 50, 600]
    titles = [ax.get_title() for ax in fig.axes]
    assert titles[0] == "tiny-gpt2: total self-repair" and titles[-1] == "tiny-pythia: loss"
    loss_line = fig.axes[len(PANELS) - 1].lines[0]
    assert list(loss_line.get_ydata()) == [8.0, 6.0, 4.0]
    first_row = fig.axes[:4]
    assert len({ax.get_ylim() for ax in first_row}) == 1  # self-repair and its parts: one scale


def test_the_training_figure_rule_script_stage_and_caption_exist():
    (figure,) = run_figures(frozen_ln=False, kinds=("training",))
    text = rule_texts_of("training.smk")[figure.rule]
    assert '"results/figures/training_self_repair.png"' in text
    assert 'caption="../report/training_self_repair.rst"' in text
    assert (ROOT / "workflow" / "report" / "training_self_repair.rst").is_file()
    script = (ROOT / "workflow" / "scripts" / rule_script(figure.rule)).read_text()
    assert f"stages.training import {figure.rule}" in script
    assert figure.rule in stage_training.__all__


def test_train_model_with_keep_steps_writes_the_same_model_files(tmp_path):
    """The rule's stage with and without keep_steps: byte-identical weights (so the same
    model_revision and every number measured on the model), the checkpoints beside them."""
    from selfrepair.data.sources import python_stdlib_documents
    from selfrepair.data.tokenizer import train_tokenizer
    from selfrepair.stages.data import train_model
    from selfrepair.stages.joblog import model_revision
    from selfrepair.stages.records import read_json

    docs = [d for _, d in zip(range(60), python_stdlib_documents("measure"), strict=False)]
    for i, doc in enumerate(docs):
        (tmp_path / f"doc{i}.txt").write_text(doc)
    corpus = {"source": "text_files", "files": [str(tmp_path / f"doc{i}.txt") for i in range(60)]}
    train_tokenizer(docs, 300, tmp_path / "tok")
    sizes = dict(arch="gpt2", n_layers=1, d_model=16, n_heads=2, n_ctx=16, steps=5, batch_size=4)
    args = dict(sizes, lr=0.01, seed=0, corpus=corpus, n_heldout_rows=8, progress=False)
    plain = train_model(tmp_path / "tok", tmp_path / "plain", **args)
    kept = train_model(tmp_path / "tok", tmp_path / "kept", **args, keep_steps=[0, 2, 5])
    weights = "model.safetensors"
    assert (tmp_path / "plain" / weights).read_bytes() == (tmp_path / "kept" / weights).read_bytes()
    assert model_revision("m", str(tmp_path / "plain")) == model_revision(
        "m", str(tmp_path / "kept")
    )
    assert kept.pop("kept_steps") == [0, 2] and kept == plain
    steps = sorted(p.name for p in (tmp_path / "kept" / sr_config.CHECKPOINT_DIR).iterdir())
    assert steps == ["step0", "step2"]
    step2 = (tmp_path / "kept" / "checkpoints" / "step2" / weights).read_bytes()
    assert step2 != (tmp_path / "kept" / weights).read_bytes()
    # training.json: the metrics at the top level, checked by the workflow's record reader
    record = read_json(tmp_path / "plain" / "training.json")
    assert {k: record[k] for k in plain} == plain and "versions" in record
