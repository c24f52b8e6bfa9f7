"""Cluster resources without a cluster: per-model values from the config (model entry over the
top-level defaults), their growth on retry, and what the SLURM workflow profile adds: a GPU for
the rules that run a model, none for the others, site settings from the environment."""

from __future__ import annotations

import copy
import re
import subprocess
from pathlib import Path

import pytest
import yaml
from snakemake.profiles import ProfileConfigFileParser
from snakemake.utils import validate

import selfrepair.config as sr_config
import selfrepair.config.cluster as sr_cluster

ROOT = Path(__file__).resolve().parents[1]
SCHEMA = str(ROOT / "workflow" / "schemas" / "config.schema.yaml")
PROFILE = ROOT / "profiles" / "slurm" / "config.yaml"
SITE_VARIABLES = (
    "SELFREPAIR_SLURM_ACCOUNT",
    "SELFREPAIR_SLURM_PARTITION",
    "SELFREPAIR_GPU_PARTITION",
    "SELFREPAIR_GPU_MODEL",
)


def paper_config() -> dict:
    config = yaml.safe_load((ROOT / "config" / "config.yaml").read_text())
    validate(config, SCHEMA)
    return config


def test_model_entry_overrides_the_defaults_key_by_key():
    config = paper_config()
    entries = sr_config.model_entries(config)
    assert config["resources"] == {"threads": 4, "mem_mb": 16000, "runtime": 60}
    assert sr_cluster.model_resources(config, entries["pythia-1b"]) == {
        "threads": 4,
        "mem_mb": 24000,
        "runtime": 60,
    }
    assert sr_cluster.model_resources(config, entries["gpt2-small"]) == {
        "threads": 4,
        "mem_mb": 8000,
        "runtime": 30,
    }
    assert sr_cluster.model_resources(config, entries["gpt2-medium"]) == config["resources"]


def test_schema_fills_defaults_and_names_a_bad_resource_key():
    config = {"data": {"n_tokens": 256}, "models": ["gpt2-small"]}
    validate(config, SCHEMA)
    assert config["resources"] == {"threads": 4, "mem_mb": 16000, "runtime": 60}
    bad = copy.deepcopy(paper_config())
    bad["models"].append({"name": "x", "path": "/m", "resources": {"mem_gb": 4}})
    with pytest.raises(Exception) as info:
        validate(bad, SCHEMA)
    message = sr_config.describe_validation_error(sr_config.validation_error_from(info.value))
    assert message.startswith("config key models[5].resources:") and "'mem_gb'" in message
    bad = copy.deepcopy(paper_config())
    bad["resources"]["runtime"] = 0
    with pytest.raises(Exception) as info:
        validate(bad, SCHEMA)
    message = sr_config.describe_validation_error(sr_config.validation_error_from(info.value))
    assert message.startswith("config key resources.runtime:")


def test_memory_doubles_and_time_grows_on_each_retry():
    assert [sr_cluster.mem_mb_for_attempt(3000, a) for a in (1, 2, 3)] == [3000, 6000, 12000]
    assert [sr_cluster.runtime_for_attempt(45, a) for a in (1, 2, 3)] == [45, 90, 135]
    with pytest.raises(ValueError, match="attempt counts from 1"):
        sr_cluster.mem_mb_for_attempt(3000, 0)


def parse_profile(monkeypatch, **env: str) -> dict[str, object]:
    """The profile as Snakemake turns it into command-line arguments."""
    for name in SITE_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    with PROFILE.open() as fh:
        return dict(ProfileConfigFileParser().parse(fh))


def set_resources(parsed: dict) -> dict[str, dict[str, str]]:
    out: dict[str, dict[str, str]] = {}
    for item in parsed.get("set-resources", []):
        rule, assignment = item.split(":", 1)
        key, value = assignment.split("=", 1)
        out.setdefault(rule, {})[key] = value
    return out


def model_rules() -> set[str]:
    """Rules whose resources are a model's (model_mem_mb): the ones that run a model, and the
    `use rule X as Y with:` variants of those (which inherit X's resources)."""
    rules, pairs = set(), []
    for smk in (ROOT / "workflow" / "rules").glob("*.smk"):
        text = smk.read_text()
        for block in re.split(r"\n(?=(?:rule|checkpoint) )", text):
            head = re.match(r"(?:rule|checkpoint) (\w+):", block)
            if head and "mem_mb=model_mem_mb" in block:
                rules.add(head.group(1))
        pairs += re.findall(r"^use rule (\w+) as (\w+) with:", text, re.MULTILINE)
    return rules | {variant for base, variant in pairs if base in rules}


# Model rules that run no pass worth a GPU: process_weights loads the model on the CPU in float32
# (ModelJob's default device) only to write its processed weights once (stages.clean).
CPU_MODEL_RULES = {"process_weights"}


def test_profile_gives_a_gpu_to_exactly_the_rules_that_run_a_model(monkeypatch):
    parsed = parse_profile(monkeypatch)
    assert parsed["executor"] == "slurm"
    assert int(parsed["retries"]) >= 1
    gpu = set_resources(parsed)
    assert {"clean_cache", "ablate", "train_model"} <= model_rules()
    assert CPU_MODEL_RULES <= model_rules()
    assert set(gpu) == model_rules() - CPU_MODEL_RULES
    assert all(res == {"gpu": "1"} for res in gpu.values())
    defaults = dict(item.split("=", 1) for item in parsed["default-resources"])
    assert "attempt" in defaults["mem_mb"] and "gpu" not in defaults
    assert eval(defaults["mem_mb"], {"attempt": 2}) == 2 * eval(defaults["mem_mb"], {"attempt": 1})


def test_site_settings_come_from_the_environment(monkeypatch):
    parsed = parse_profile(
        monkeypatch,
        SELFREPAIR_SLURM_ACCOUNT="proj-42",
        SELFREPAIR_SLURM_PARTITION="all",  # a Python builtin's name: must stay a string
        SELFREPAIR_GPU_PARTITION="gpu",
        SELFREPAIR_GPU_MODEL="a100",
    )
    defaults = dict(item.split("=", 1) for item in parsed["default-resources"])
    assert eval(defaults["slurm_account"]) == "proj-42"
    assert eval(defaults["slurm_partition"]) == "all"
    for res in set_resources(parsed).values():
        assert eval(res["slurm_partition"]) == "gpu" and eval(res["gpu_model"]) == "a100"
    # The GPU partition falls back to the general one.
    parsed = parse_profile(monkeypatch, SELFREPAIR_SLURM_PARTITION="batch")
    assert all(eval(r["slurm_partition"]) == "batch" for r in set_resources(parsed).values())


def test_cluster_script_says_in_one_line_why_it_cannot_start(tmp_path):
    """Without the SLURM daemons on PATH (or without root) tests/slurm/cluster.sh exits 3 with
    one 'CANNOT START:' line, the skip reason of tests/test_slurm.py, and writes nothing."""
    script = ROOT / "tests" / "slurm" / "cluster.sh"
    env = {"PATH": "/usr/bin:/bin", "SELFREPAIR_SLURM_STATE": str(tmp_path / "state")}
    proc = subprocess.run([str(script), "start"], env=env, capture_output=True, text=True)
    assert proc.returncode == 3, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("CANNOT START: ")
    assert ("needs root" in lines[0]) or ("missing slurmctld slurmd munged" in lines[0])
    assert not (tmp_path / "state").exists()
