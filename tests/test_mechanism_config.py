"""The mechanisms section of the config: the paper's heads in config.yaml, named substitutes in
the demo, and one-line errors naming the key for heads or models that do not exist."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import yaml
from helpers import ROOT, SCHEMA, load, merged
from snakemake.utils import validate

import selfrepair.config as sr_config
from selfrepair.config import heads_by_model, mechanism_targets, model_dims


def paper() -> dict:
    config = load("config.yaml")
    validate(config, SCHEMA)
    return config


def demo() -> dict:
    config = merged(load("config.yaml"), load("demo.yaml"))
    validate(config, SCHEMA)
    return config


def test_paper_config_runs_the_papers_heads():
    targets = mechanism_targets(paper())
    shown = {k: [(t.model, t.heads) for t in v] for k, v in targets.items()}
    assert shown == {
        "fig07": [("pythia-160m", ((10, 11),))],
        "fig08": [
            ("gpt2-small", ((9, 11),)),
            ("pythia-160m", ((7, 8),)),
            ("pythia-410m", ((17, 4),)),
        ],
        "fig15": [("pythia-160m", ((10, 11),))],
        "fig04": [("pythia-160m", ((11, 2),))],
        "fig16_18": [("gpt2-small", ((11, 3), (11, 11)))],
        "fig09": [("gpt2-medium", ((21, 1),))],
    }
    assert not any(t.substituted for ts in targets.values() for t in ts)
    neurons = heads_by_model(targets["fig07"] + targets["fig08"] + targets["fig15"])
    assert neurons == {
        "pythia-160m": [(7, 8), (10, 11)],
        "gpt2-small": [(9, 11)],
        "pythia-410m": [(17, 4)],
    }
    section = paper()["mechanisms"]
    assert section["reinforcement"]["scales"] == [1, 3, 5]
    assert section["neurons"]["thresholds"] == [0.5, 0.1, 0.05, 0.02, 0.01]
    assert section["neurons"]["top_n"] == 10 and section["neurons"]["ablation"] == "resample"


def test_schema_defaults_are_the_papers():
    config = paper()
    del config["mechanisms"]
    validate(config, SCHEMA)  # fills defaults
    targets = mechanism_targets(config)
    assert targets["fig07"][0].heads == ((10, 11),) and targets["fig09"][0].model == "gpt2-medium"
    assert config["mechanisms"]["reinforcement"] == {
        "scales": [1, 3, 5],
        "rows": 50,
        "seq_len": 30,
        "second_half": True,
        "fig09": {"model": "gpt2-medium", "heads": [[21, 1]]},
    }


def test_demo_substitutes_are_named():
    targets = mechanism_targets(demo())
    assert all(t.substituted for ts in targets.values() for t in ts)
    record = {"model": "tiny-gpt2", "heads": [[3, 2], [3, 0]], "description": "picked"}
    sentence = targets["fig16_18"][0].resolved(record).substitution()
    assert sentence.startswith(
        "tiny-gpt2 L3H2, L3H0, picked, is a substitute for the paper's gpt2-small L11H3, L11H11"
    )
    assert {t.model for t in targets["fig08"]} == {"tiny-gpt2", "tiny-pythia"}


def edit(config: dict, path: str, value) -> dict:
    node = config
    keys = path.split(".")
    for key in keys[:-1]:
        node = node[int(key)] if key.isdigit() else node[key]
    node[keys[-1]] = value
    return config


@pytest.mark.parametrize(
    ("base", "path", "value", "expected"),
    [
        (
            paper,
            "mechanisms.neurons.fig07.heads",
            [[12, 0]],
            "config key mechanisms.neurons.fig07.model: pythia-160m has no L12H0 (12 layers x "
            "12 heads); add it to models or set mechanisms.neurons.fig07.substitute",
        ),
        (
            paper,
            "mechanisms.neurons.fig07.heads",
            [[11, 0]],
            "config key mechanisms.neurons.fig07.model: the MLP of layer 11 does not read the "
            "output of L11H0 in pythia-160m (parallel attention and MLP)",
        ),
        (
            paper,
            "mechanisms.norms.fig16_18.model",
            "gpt2-large",
            "config key mechanisms.norms.fig16_18.model: gpt2-large is not among this run's models",
        ),
        (
            demo,
            "mechanisms.neurons.fig08.1.substitute",
            {"model": "tiny-pythia", "heads": [[3, 0]]},
            "config key mechanisms.neurons.fig08[1].substitute: the MLP of layer 3 does not "
            "read the output of L3H0 in tiny-pythia",
        ),
        (
            demo,
            "mechanisms.reinforcement.fig09.substitute",
            {"model": "tiny-gpt2", "heads": [[1, 4]]},
            "config key mechanisms.reinforcement.fig09.substitute: tiny-gpt2 has no L1H4 "
            "(4 layers x 4 heads)",
        ),
        (
            demo,
            "mechanisms.reinforcement.seq_len",
            129,
            "config key mechanisms.reinforcement.seq_len: 129 is longer than the token rows",
        ),
        (
            demo,
            "mechanisms.reinforcement.rows",
            10_000,
            "config key mechanisms.reinforcement.rows: 10000 rows asked, the data has 512",
        ),
    ],
)
def test_missing_heads_and_models_fail_in_one_line_naming_the_key(base, path, value, expected):
    config = edit(base(), path, value)
    with pytest.raises(sr_config.ConfigError) as info:
        mechanism_targets(config)
    assert str(info.value).startswith(expected)
    assert "\n" not in str(info.value)


def test_norms_need_the_head_measured_by_the_ablation_stage():
    config = paper()
    config["models"][3] = {"name": "gpt2-small", "heads": [[11, 3]]}
    with pytest.raises(sr_config.ConfigError, match="L11H11 is not among the heads measured"):
        mechanism_targets(config)


def test_a_substitute_without_heads_or_pick_fails_as_in_the_figures_section():
    """The resolver the figures section uses: a substitute for the paper's heads names heads
    (or picks them); before, a mechanism substitute without either ran with no heads."""
    config = paper()
    config["mechanisms"]["norms"]["fig04"] = {
        "model": "pythia-1b",
        "heads": [[20, 0]],
        "substitute": {"model": "pythia-160m"},
    }
    with pytest.raises(sr_config.ConfigError) as info:
        mechanism_targets(config)
    assert str(info.value).startswith(
        "config key mechanisms.norms.fig04.substitute.heads: missing; name the heads of "
        "pythia-160m to show in place of the paper's"
    )


def test_dims_of_local_checkpoints_come_from_their_config(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"n_layer": 6, "n_head": 8}))
    assert model_dims({"name": "x", "path": str(tmp_path)}) == (6, 8)
    assert model_dims({"name": "x", "path": str(tmp_path / "missing")}) is None
    assert model_dims({"name": "unknown-hub-model"}) is None


def test_wrong_mechanism_keys_fail_schema_validation():
    config = paper()
    config["mechanisms"]["neurons"]["top_k"] = 10
    with pytest.raises(Exception) as info:
        validate(config, SCHEMA)
    detail = sr_config.validation_error_from(info.value)
    message = sr_config.describe_validation_error(detail)
    assert message.startswith("config key mechanisms.neurons: Additional properties")
    assert "'top_k' was unexpected" in message


def test_snakemake_stops_on_a_missing_mechanism_head(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        yaml.safe_dump({"mechanisms": {"reinforcement": {"fig09": {"heads": [[30, 1]]}}}})
    )
    proc = subprocess.run(
        [sys.executable, "-m", "snakemake", "-n", "--cores", "1", "--configfile", str(bad)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert proc.returncode != 0
    assert (
        "config key mechanisms.reinforcement.fig09.model: gpt2-medium has no L30H1 "
        "(24 layers x 16 heads)" in proc.stdout + proc.stderr
    )
