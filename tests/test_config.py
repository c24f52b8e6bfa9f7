"""Config validation: both shipped configs are valid; a wrong key or value fails at once with a
message naming the key, both from the package and from `snakemake -n`."""

from __future__ import annotations

import copy
import json
import subprocess
import sys

import pytest
import yaml
from helpers import ROOT, SCHEMA, load, merged
from snakemake.utils import validate

import selfrepair.config as sr_config


def message_for(config: dict) -> str:
    with pytest.raises(Exception) as info:
        validate(config, SCHEMA)
    detail = sr_config.validation_error_from(info.value)
    assert detail is not None
    return sr_config.describe_validation_error(detail)


@pytest.mark.parametrize("name", ["config.yaml", "demo.yaml"])
def test_shipped_configs_are_valid_and_get_defaults(name):
    config = load(name)
    validate(config, SCHEMA)
    assert config["engine"]["top_fraction"] == 0.02
    entries = sr_config.model_entries(config)
    sr_config.check_hub_names(entries)
    assert sr_config.n_shards(config["data"]) >= 1


def test_paper_config_is_the_paper_setup():
    config = load("config.yaml")
    validate(config, SCHEMA)
    assert config["data"]["corpus"]["hub"]["path"] == "NeelNanda/pile-10k"
    assert config["data"]["n_tokens"] == 1_000_000 and config["data"]["seq_len"] == 128
    names = set(sr_config.model_entries(config))
    assert {"pythia-160m", "pythia-410m", "pythia-1b", "gpt2-small", "gpt2-medium"} <= names
    assert config["ablations"] == ["resample", "mean", "zero"]


@pytest.mark.parametrize(
    ("edit", "expected"),
    [
        (lambda c: c.update(devcie="cpu"), "'devcie' was unexpected"),
        (lambda c: c["data"].update(n_tokens=-5), "config key data.n_tokens"),
        (lambda c: c["data"].update(seq_len="long"), "config key data.seq_len"),
        (lambda c: c.update(device="gpu"), "config key device"),
        (lambda c: c.update(ablations=["resample", "noise"]), "config key ablations[1]"),
        (lambda c: c["engine"].update(top_fraction=2), "config key engine.top_fraction"),
        (lambda c: c["models"].append({"name": "x", "heads": [[1]]}), "models[5].heads[0]"),
        (lambda c: c["models"].append({"name": "y", "pth": "/m"}), "'pth' was unexpected"),
        (
            lambda c: c["models"].append(
                {"name": "z", "path": "/m", "train": {"arch": "gpt2", "tokenizer": "t"}}
            ),
            "config key models[5]: has both path and train; keep path (a checkpoint to load) or "
            "train (a model the workflow trains), not both",
        ),
    ],
)
def test_wrong_key_or_value_names_the_key(edit, expected):
    config = copy.deepcopy(load("config.yaml"))
    edit(config)
    message = message_for(config)
    assert expected in message
    assert "\n" not in message


def test_unknown_model_and_duplicates_fail_with_the_fix():
    with pytest.raises(sr_config.ConfigError, match="unknown model 'gpt-5'.*path"):
        sr_config.check_hub_names(sr_config.model_entries({"models": ["gpt-5"]}))
    with pytest.raises(sr_config.ConfigError, match="listed twice"):
        sr_config.model_entries({"models": ["gpt2-small", {"name": "gpt2-small"}]})
    with pytest.raises(sr_config.ConfigError, match="not defined under tokenizers"):
        sr_config.model_entries(
            {"models": [{"name": "t", "train": {"arch": "gpt2", "tokenizer": "nope"}}]}
        )


def test_official_names_and_aliases_resolve_offline():
    assert sr_config.official_model_name("pythia-160m") == "EleutherAI/pythia-160m"
    assert sr_config.official_model_name("gpt2-small") == "gpt2"


def test_shards_cover_rows_and_never_leave_a_single_row():
    data = {"n_tokens": 129 * 8 + 1, "seq_len": 129, "shard_rows": 4}  # 9 rows -> 10
    assert sr_config.n_rows(data) == 10
    bounds = [sr_config.shard_bounds(data, s) for s in range(sr_config.n_shards(data))]
    assert bounds == [(0, 4), (4, 8), (8, 10)]
    with pytest.raises(sr_config.ConfigError, match="does not exist"):
        sr_config.shard_bounds(data, 3)


def test_snakemake_reports_a_bad_config_in_one_line(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({"data": {"n_tokens": 100, "sequence_length": 8}}))
    proc = subprocess.run(
        [sys.executable, "-m", "snakemake", "-n", "--cores", "1", "--configfile", str(bad)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode != 0
    out = proc.stdout + proc.stderr
    assert "config key data: Additional properties are not allowed ('sequence_length'" in out


# --- figures: the paper's model and heads, or a named substitute ------------------------------


def test_paper_config_shows_the_papers_heads_without_substitutes():
    config = load("config.yaml")
    validate(config, SCHEMA)
    targets = sr_config.figure_targets(config)
    assert targets["fig03"].model == "pythia-410m"
    assert targets["fig03"].heads == ((22, 11), (20, 6), (23, 1), (20, 14))
    assert targets["fig05"].heads == ((11, 10),) and targets["fig02"].model == "pythia-1b"
    assert not any(t.substituted for t in targets.values())
    assert config["figures"]["bootstrap"] == {"resamples": 1000, "level": 0.95}


def test_demo_config_names_substitutes_in_the_caption_sentence():
    config = merged(load("config.yaml"), load("demo.yaml"))
    validate(config, SCHEMA)
    targets = sr_config.figure_targets(config)
    fig03 = targets["fig03"]
    # Picked at run time (selfrepair.analysis.substitutes): the sentence names the heads once resolved.
    assert fig03.model == "tiny-pythia" and fig03.picked and fig03.pick["n"] == 4
    record = {"model": "tiny-pythia", "heads": [[2, 0], [2, 3], [3, 2], [2, 1]]}
    shown = fig03.resolved(record | {"description": "the 4 late heads with the largest DE"})
    sentence = shown.substitution()
    assert sentence.startswith(
        "tiny-pythia L2H0, L2H3, L3H2, L2H1, the 4 late heads with the largest DE, is a "
        "substitute for the paper's pythia-410m L22H11, L20H6, L23H1, L20H14"
    )
    assert "pythia-410m is not among this run's models" in sentence
    assert shown.as_params()["substitution"] == sentence
    assert fig03.as_params()["substitution"] is None  # not resolved yet


def demo_with(figures: dict) -> dict:
    config = merged(load("config.yaml"), load("demo.yaml"))
    for key, entry in figures.items():
        config["figures"][key].update(entry)
    return config


@pytest.mark.parametrize(
    ("figures", "expected"),
    [
        (
            {"fig02": {"substitute": None}},
            "config key figures.fig02.model: pythia-1b is not among this run's models; add "
            "it to models or set figures.fig02.substitute",
        ),
        (
            {"fig05": {"substitute": {"model": "tiny-pythia", "heads": [[4, 0]]}}},
            "config key figures.fig05.substitute: tiny-pythia has no L4H0 (4 layers x 4 heads)",
        ),
        (
            {"fig03": {"substitute": {"model": "tiny-llama", "heads": [[0, 0]]}}},
            "config key figures.fig03.substitute: tiny-llama is not among this run's models",
        ),
        (
            {"fig03": {"substitute": {"model": "tiny-gpt2"}}},
            "config key figures.fig03.substitute.heads: missing",
        ),
    ],
)
def test_unavailable_figure_model_or_head_fails_in_one_line_naming_the_key(figures, expected):
    config = demo_with(figures)
    with pytest.raises(sr_config.ConfigError) as info:
        sr_config.figure_targets(config)
    assert str(info.value).startswith(expected)
    assert "\n" not in str(info.value)


def test_a_model_run_without_the_papers_head_gets_the_substitute():
    config = load("config.yaml")
    config["models"][1] = {"name": "pythia-410m", "heads": [[22, 11], [20, 6]]}
    config["figures"]["fig03"]["substitute"] = {"model": "pythia-410m", "heads": [[22, 11]]}
    target = sr_config.figure_target(config, "fig03")
    assert target.substituted and target.heads == ((22, 11),)
    assert "L23H1 is not among the heads measured in pythia-410m" in target.substitution()


def test_hub_model_heads_are_checked_against_the_data_naming_the_key():
    config = load("config.yaml")
    target = sr_config.figure_target(config, "fig03").as_params()
    sr_config.check_target_heads(target, 24, 16)
    with pytest.raises(sr_config.ConfigError) as info:
        sr_config.check_target_heads(target, 22, 16)
    assert str(info.value) == (
        "config key figures.fig03.heads: pythia-410m has no L22H11 (22 layers x 16 heads)"
    )


@pytest.mark.parametrize(
    ("model", "config_json", "expected"),
    [
        # A hub model of known size (12 layers): its heads used to be checked only when the
        # figure was drawn, since the figures' resolver read sizes from `train` alone.
        (
            "pythia-160m",
            None,
            "config key figures.fig05.model: pythia-160m has no L12H0 (12 layers x 12 heads); "
            "add it to models or set figures.fig05.substitute",
        ),
        # A checkpoint by path with 2 layers: neither in `train` nor 4 layers.
        (
            "mine",
            {"architectures": ["GPT2LMHeadModel"], "n_layer": 2, "n_head": 4},
            "config key figures.fig05.model: mine has no L12H0 (2 layers x 4 heads); "
            "add it to models or set figures.fig05.substitute",
        ),
    ],
)
def test_figure_heads_are_checked_against_model_dims_like_mechanism_heads(
    tmp_path, model, config_json, expected
):
    """One resolver for figures and mechanisms: a figure's heads are checked against the size
    the config knows (model_dims), not only a trained model's `train` with a default of 4."""
    config = load("config.yaml")
    if config_json is not None:
        (tmp_path / "config.json").write_text(json.dumps(config_json))
        config["models"].append({"name": model, "path": str(tmp_path)})
    config["figures"]["fig05"] = {"model": model, "heads": [[12, 0]]}
    with pytest.raises(sr_config.ConfigError) as info:
        sr_config.figure_target(config, "fig05")
    assert str(info.value) == expected
    # The mechanisms section resolves the same spec to the same reason.
    config["mechanisms"]["norms"]["fig04"] = {"model": model, "heads": [[12, 0]]}
    with pytest.raises(sr_config.ConfigError) as info:
        sr_config.mechanism_targets(config)
    assert str(info.value) == expected.replace("figures.fig05", "mechanisms.norms.fig04")


def test_validate_run_fills_defaults_and_names_the_key():
    config = merged(load("config.yaml"), load("demo.yaml"))
    entries = sr_config.validate_run(config)
    assert config["engine"]["top_fraction"] == 0.02
    assert list(entries) == list(sr_config.model_entries(config))
    bad = load("config.yaml")
    bad["data"]["n_tokens"] = -5
    with pytest.raises(sr_config.ConfigError, match=r"^config key data\.n_tokens: "):
        sr_config.validate_run(bad)


def test_every_config_module_imports_without_the_heavy_packages():
    """The Snakefile (parsed by every job) and the figure scripts (analysis environment) import
    the config package: no module of it may need torch, jsonschema or transformer_lens."""
    code = (
        "import importlib, pkgutil, sys\n"
        "class Block:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name.split('.')[0] in {'torch', 'jaxtyping', 'jsonschema', "
        "'transformer_lens', 'transformers', 'huggingface_hub', 'snakemake'}:\n"
        "            raise ImportError('blocked ' + name)\n"
        "sys.meta_path.insert(0, Block())\n"
        "import selfrepair.config as package\n"
        "names = [m.name for m in pkgutil.iter_modules(package.__path__)]\n"
        "for name in names:\n"
        "    importlib.import_module('selfrepair.config.' + name)\n"
        "missing = [n for n in package.__all__ if not hasattr(package, n)]\n"
        "assert not missing, missing\n"
        "print(len(names))\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert int(proc.stdout) >= 10  # errors, models, layout, picks, targets, ... and core
