"""No single damaged, swapped or misnamed file changes a result or reaches outside the project,
tried through the workflow itself (snakemake, not only the function under it), each stopping in
one line that names the file or config key and the fix:
- names that would leave results/ or resources/ (.., absolute, links), before any job;
- a model whose config.json asks for more memory than its jobs have, checkpoint_shards beyond
  the shards, pickled weights torch refuses, before any job;
- a store's consolidated metadata edited, a store copied over another, in a finished run: the
  stage reading it stops and writes nothing (slow: the reduced demo's run, `finished_run`)."""

from __future__ import annotations

import contextlib
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from helpers import link_project, snakemake
from test_config_keys import every_key_config, path_tokenizer

import selfrepair.config.places as places
from selfrepair.models.builders import build_model


def workdir(tmp: Path) -> Path:
    """A run folder with the workflow's code linked in, as the slow tests make them."""
    run = tmp / "run"
    run.mkdir()
    link_project(run, test_configs=False)
    return run


def run_workflow(tmp: Path, config: dict, *args: str) -> tuple[int, str, Path]:
    """snakemake with `config` (over config/config.yaml) in a fresh run folder under tmp:
    (return code, output, run folder); -n unless args say otherwise."""
    run = workdir(tmp) if not (tmp / "run").exists() else tmp / "run"
    configfile = tmp / "config.json"
    configfile.write_text(json.dumps(config))
    proc = subprocess.run(
        [sys.executable, "-m", "snakemake", "--cores", "1", "--configfile", str(configfile)]
        + list(args or ["-n"]),
        cwd=run,
        capture_output=True,
        text=True,
        timeout=300,
    )
    return proc.returncode, proc.stdout + proc.stderr, run


def config_line(out: str) -> str:
    """The one line naming a config key (or a file) that a stopped run printed."""
    lines = [line for line in out.splitlines() if line.startswith("config key ")]
    assert len(lines) == 1, out[-3000:]
    return lines[0]


# --- names and links: nothing is written or deleted outside results/ and resources/ ------------


def _rename_tokenizer(config: dict, name: str) -> None:
    config["tokenizers"] = {name: config["tokenizers"]["t1"]}
    for model in config["models"]:  # every trained model's, the tasks_only one's too
        if isinstance(model, dict) and "train" in model:
            model["train"]["tokenizer"] = name


def _rename_first_task(config: dict, name: str) -> None:
    """The first task renamed, the others (which measure the tasks_only model) kept."""
    first, *rest = config["tasks"].items()
    config["tasks"] = {name: first[1], **dict(rest)}


def _rename_model(config: dict, name: str) -> None:
    """models[1] renamed, and every key that names it (figures, tasks) with it."""
    old = json.dumps(config["models"][1]["name"])
    config.update(json.loads(json.dumps(config).replace(old, json.dumps(name))))


NAMES = {
    "tokenizer ..": (
        lambda c: _rename_tokenizer(c, "../../../outside"),
        "config key tokenizers: '../../../outside' cannot be a name",
    ),
    "absolute model name": (
        lambda c: c["models"][1].update(name="/tmp/outside"),
        "config key models[1].name: '/tmp/outside' cannot be a name",
    ),
    "train.tokenizer ..": (
        lambda c: c["models"][0]["train"].update(tokenizer="../x"),
        "config key models[0].train.tokenizer: '../x' cannot be a name",
    ),
    "attribution heads model ..": (
        lambda c: c["figures"]["attribution"].update(heads={"../m": [[0, 0]]}),
        "config key figures.attribution.heads: '../m' cannot be a name",
    ),
    "a results/ folder of the workflow's": (
        lambda c: _rename_model(c, "tables"),
        "config key models[tables]: 'tables' is a folder the workflow writes itself",
    ),
    # issue 34: results/<model>/tasks/results/... made two models' stores record one place
    "a task named results": (
        lambda c: _rename_first_task(c, "results"),
        "config key tasks.results: 'results' is a folder the workflow writes itself",
    ),
    "a model named like a folder deeper down": (
        lambda c: _rename_model(c, "ablation"),
        "config key models[ablation]: 'ablation' is a folder the workflow writes itself",
    ),
    "a task named like an ablation": (
        lambda c: _rename_first_task(c, "mean"),
        "config key tasks.mean: 'mean' is a folder the workflow writes itself",
    ),
    "a tokenizer named like a folder": (
        lambda c: _rename_tokenizer(c, "clean"),
        "config key tokenizers.clean: 'clean' is a folder the workflow writes itself",
    ),
}


@pytest.mark.parametrize("case", NAMES)
def test_a_name_that_would_leave_its_folder_is_refused(case, tmp_path):
    config = every_key_config(tmp_path)
    edit, expected = NAMES[case]
    edit(config)
    code, out, _ = run_workflow(tmp_path, config)
    assert code != 0
    assert config_line(out).startswith(expected), out[-2000:]
    assert not (tmp_path / "outside").exists() and not Path("/tmp/outside").exists()


def test_the_workflows_folders_are_those_its_rules_write(tmp_path):
    """places.WORKFLOW_FOLDERS, which names may not take, against every folder of the paths a
    dry run of every key plans (outputs, logs, benchmarks): the names from the config and the
    rules' own folders below logs/ and benchmarks/ aside."""
    config = every_key_config(tmp_path)
    code, out, _ = run_workflow(tmp_path, config, "-n", "--forceall")
    assert code == 0, out[-3000:]
    lines = [x.split(":", 1)[1] for x in out.splitlines() if x.strip().startswith(PLANNED)]
    paths = [Path(p.strip()) for line in lines for p in line.split(",")]
    named = {m if isinstance(m, str) else m["name"] for m in config["models"]}
    named |= set(config["tasks"]) | set(config["tokenizers"])
    folders = set()
    for path in paths:
        parts = path.parts[:-1]
        folders |= {
            part
            for i, part in enumerate(parts)
            if part.split("@")[0] not in named and (i == 0 or parts[i - 1] not in RULE_FOLDERS)
        }
    assert len(paths) > 300 and {"sets", "tasks", "neurons", "resources"} <= folders
    assert folders <= places.WORKFLOW_FOLDERS, sorted(folders - places.WORKFLOW_FOLDERS)


PLANNED = ("output:", "log:", "benchmark:")
RULE_FOLDERS = ("logs", "benchmarks")  # below them, a folder per rule


def test_a_link_at_a_named_folder_is_refused_before_planning(tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    run = workdir(tmp_path)
    (run / "resources" / "tokenizers").mkdir(parents=True)
    (run / "resources" / "tokenizers" / "t1").symlink_to(outside)
    code, out, _ = run_workflow(tmp_path, every_key_config(tmp_path))
    assert code != 0
    assert config_line(out) == (
        f"config key tokenizers.t1: resources/tokenizers/t1 is a link (to {outside}); the "
        "workflow writes and deletes there, so remove the link (link resources/ as a whole to "
        "keep outputs elsewhere)"
    )


def test_a_link_deeper_in_results_stops_the_run_before_any_job(tmp_path):
    """A link inside a model's folder (results/m-train/clean -> elsewhere): the start of the
    run checks every planned output, log and benchmark file, and nothing is written there."""
    outside = tmp_path / "outside"
    outside.mkdir()
    run = workdir(tmp_path)
    (run / "results" / "m-train").mkdir(parents=True)
    (run / "results" / "m-train" / "clean").symlink_to(outside)
    code, out, _ = run_workflow(tmp_path, every_key_config(tmp_path), "--forceall")
    assert code != 0
    line = next(x for x in out.splitlines() if "outside results/" in x)
    assert line.startswith("results/m-train/clean/shard-") and line.endswith(
        "outside results/ (through a link on its way); remove the link"
    ), line
    assert list(outside.iterdir()) == []
    assert not (run / "resources" / "tokenizers").exists()  # no job ran


def test_a_results_folder_linked_as_a_whole_is_accepted(tmp_path):
    elsewhere = tmp_path / "big-disk"
    elsewhere.mkdir()
    run = workdir(tmp_path)
    (run / "results").symlink_to(elsewhere)
    code, out, _ = run_workflow(tmp_path, every_key_config(tmp_path))
    assert code == 0, out[-3000:]


# --- sizes, shards and weights: before any job -------------------------------------------------


def test_a_checkpoint_asking_for_too_much_memory_stops_planning(tmp_path):
    config = every_key_config(tmp_path)
    folder = Path(config["models"][1]["path"])
    hf = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps(hf | {"n_embd": 10**7}))
    code, out, _ = run_workflow(tmp_path, config)
    assert code != 0
    line = config_line(out)
    assert line.startswith("config key models[m-path]: a job of m-path needs at least 17.1 PB ")
    assert line.endswith(
        "but resources.mem_mb is 2,000 MB; raise models[m-path].resources.mem_mb, or check "
        "the checkpoint's config.json"
    )


def test_checkpoint_shards_beyond_the_run_are_refused(tmp_path):
    config = every_key_config(tmp_path)
    config["checkpoint_shards"] = 3
    code, out, _ = run_workflow(tmp_path, config)
    assert code != 0
    assert config_line(out) == (
        "config key checkpoint_shards: 3 shards asked for but data makes only 2 (64 rows of 32 "
        "per shard); set checkpoint_shards to at most 2, or null for every shard"
    )


def test_a_head_listed_twice_for_the_attribution_detail_is_refused(tmp_path):
    config = every_key_config(tmp_path)
    config["figures"]["attribution"]["heads"] = {"m-train": [[1, 1], [1, 1]]}
    code, out, _ = run_workflow(tmp_path, config)
    assert code != 0
    assert config_line(out) == (
        "config key figures.attribution.heads.m-train: L1H1 is listed twice; list it once"
    )


def pickled_checkpoint(folder: Path) -> Path:
    """A checkpoint whose pytorch_model.bin pickles an object torch's weights-only loader
    refuses (here a harmless one; a hostile file would run code when unpickled)."""
    import argparse

    model = build_model("gpt2", 300, 2, 16, 2, 16, seed=0)
    model.save_pretrained(str(folder))
    path_tokenizer().save_pretrained(str(folder))  # a path folder needs its tokenizer
    (folder / "model.safetensors").unlink()
    torch.save(dict(model.state_dict()) | {"x": argparse.Namespace()}, folder / "pytorch_model.bin")
    return folder


def test_pickled_weights_stop_the_run_before_any_job(tmp_path):
    config = every_key_config(tmp_path)
    folder = pickled_checkpoint(tmp_path / "pickled")
    config["models"][1]["path"] = str(folder)
    code, out, run = run_workflow(tmp_path, config, "--forceall")
    assert code != 0
    assert config_line(out) == (
        f"config key models[m-path].path: model folder {folder}: pytorch_model.bin holds "
        "pickled objects beyond weights (argparse.Namespace); only safetensors or weights-only "
        "checkpoints load (load it once where you trust it and save_pretrained it: that writes "
        "model.safetensors)"
    )
    assert not (run / "resources" / "tokenizers").exists()  # no job ran


def test_a_job_loading_pickled_weights_names_the_folder(tmp_path):
    from selfrepair.config import ConfigError
    from selfrepair.models.loading import load_local_checkpoint

    folder = pickled_checkpoint(tmp_path / "pickled")
    with pytest.raises(ConfigError) as caught:
        load_local_checkpoint(str(folder))
    assert str(caught.value).startswith(f"model folder {folder}: pytorch_model.bin holds pickled")


# --- damaged and swapped stores of a finished run (slow) ---------------------------------------


def _copy(source: Path, target: Path) -> None:
    if source.is_dir():
        shutil.copytree(source, target, symlinks=True)
    else:
        shutil.copy2(source, target)


@contextlib.contextmanager
def damaged(run: Path, paths: list[str]):
    """Inside the block the finished run's `paths` (stores to damage, outputs a failed job
    loses) may change; afterwards each is put back as it was (the run is shared)."""
    keep = run.parent / f"kept-{run.name}"
    keep.mkdir()
    for i, path in enumerate(paths):
        _copy(run / path, keep / str(i))
    try:
        yield
    finally:
        for i, path in enumerate(paths):
            target = run / path
            if target.is_dir():
                shutil.rmtree(target)
            elif target.exists():
                target.unlink()
            shutil.move(keep / str(i), target)
        shutil.rmtree(keep)


def forced(finished_run, target: str) -> tuple[int, str]:
    run, configs = finished_run
    # The target first: --configfile and --forcerun each take every argument after them.
    proc = snakemake(
        target, "--cores", "1", "--configfile", *configs, "--forcerun", target, cwd=run,
        timeout=600,
    )  # fmt: skip
    return proc.returncode, proc.stdout + proc.stderr


def damage_line(out: str, store: str) -> str:
    """The one line the failed job ended with (its exception's message)."""
    lines = [
        line.split("DamagedStore: ", 1)[1] for line in out.splitlines() if "DamagedStore: " in line
    ]
    assert lines, out[-3000:]
    assert lines[0].startswith(store) and lines[0].endswith(
        f"delete {store} and rerun the workflow"
    )
    return lines[0]


def flip_separator(store: Path, array: str) -> None:
    meta = json.loads((store / ".zmetadata").read_text())
    meta["metadata"][f"{array}/.zarray"]["dimension_separator"] = "/"
    (store / ".zmetadata").write_text(json.dumps(meta))


@pytest.mark.slow
def test_consolidated_metadata_edited_stops_the_explorer(finished_run):
    """The trial that once rebuilt the explorer page from NaNs with exit 0: one character of
    the repair summary's .zmetadata."""
    run, _ = finished_run
    store = "results/tiny-gpt2/attribution/resample.zarr"
    page = "results/explorer/tiny-gpt2.html"
    with damaged(run, [store, page]):
        flip_separator(run / store, "top_dde")
        code, out = forced(finished_run, page)
        assert code != 0
        assert damage_line(out, store) == (
            f"{store} is damaged: its metadata file top_dde/.zarray differs from its copy in "
            f".zmetadata; delete {store} and rerun the workflow"
        )
        assert not (run / page).exists()  # Snakemake removed the failed job's output


@pytest.mark.slow
def test_consolidated_metadata_edited_in_a_shard_stops_the_repair_summary(finished_run):
    run, _ = finished_run
    shard = "results/tiny-gpt2/attribution/resample/shard-000.zarr"
    summary = "results/tiny-gpt2/attribution/resample.zarr"
    with damaged(run, [shard, summary]):
        flip_separator(run / shard, "sum_top_dde")
        code, out = forced(finished_run, summary)
        assert code != 0
        assert "differs from its copy in .zmetadata" in damage_line(out, shard)
        assert "ArithmeticError" not in out


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["attribution", "ablation"])
def test_a_shard_copied_over_another_stops_its_reader(finished_run, kind):
    """shard-001 copied onto shard-000: every checksum passes, the place does not."""
    run, _ = finished_run
    folder = f"results/tiny-gpt2/{kind}/resample"
    first, second = f"{folder}/shard-000.zarr", f"{folder}/shard-001.zarr"
    reader = (
        "results/tiny-gpt2/attribution/resample.zarr"
        if kind == "attribution"
        else "results/tiny-gpt2/summary/resample.zarr"
    )
    # summarize_heads also writes the intervals, which the failed job loses
    lost = [reader.replace("/summary/", "/intervals/")] if kind == "ablation" else []
    with damaged(run, [first, reader, *lost]):
        shutil.rmtree(run / first)
        shutil.copytree(run / second, run / first)
        code, out = forced(finished_run, reader)
        assert code != 0
        assert damage_line(out, first) == (
            f"{first} is damaged: it was written as tiny-gpt2/{kind}/resample/shard-001.zarr (a "
            f"store copied or renamed onto this path), not as tiny-gpt2/{kind}/resample/"
            f"shard-000.zarr; delete {first} and rerun the workflow"
        )
