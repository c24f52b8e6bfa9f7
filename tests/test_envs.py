"""The per-rule conda environments pin exactly what pyproject.toml pins (CI uses the latter)."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
ENV_FILES = sorted((ROOT / "envs").glob("*.yaml"))


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def pyproject_pins() -> dict[str, str]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    pins = {}
    for req in project["dependencies"] + sum(project["optional-dependencies"].values(), []):
        name, sep, ver = req.partition("==")
        assert sep, f"pyproject.toml dependency {req!r} is not pinned with =="
        pins[canonical(name)] = ver
    return pins


def test_there_are_environment_files():
    assert len(ENV_FILES) >= 2


@pytest.mark.parametrize("env_file", ENV_FILES, ids=lambda p: p.name)
def test_env_pins_match_pyproject(env_file):
    pins = pyproject_pins()
    env = yaml.safe_load(env_file.read_text())
    pip_entries = [d for d in env["dependencies"] if isinstance(d, dict) and "pip" in d]
    assert pip_entries, f"{env_file.name} has no pip section"
    for req in pip_entries[0]["pip"]:
        name, sep, ver = req.partition("==")
        assert sep, f"{env_file.name}: {req!r} is not pinned with =="
        assert canonical(name) in pins, f"{env_file.name}: {name} is not a pyproject dependency"
        assert pins[canonical(name)] == ver, (
            f"{env_file.name} pins {name}=={ver}, pyproject.toml {pins[canonical(name)]}"
        )
    python = [d for d in env["dependencies"] if isinstance(d, str) and d.startswith("python=")]
    assert python == ["python=3.11"], f"{env_file.name} must pin python=3.11 like CI"


def test_every_rule_has_a_pinned_conda_env():
    rules_dir = ROOT / "workflow" / "rules"
    text = "\n".join(p.read_text() for p in rules_dir.glob("*.smk"))
    n_rules = len(re.findall(r"^\s*rule \w+:", text, flags=re.M))  # also rules under an if
    envs = re.findall(r'conda:\s*\n\s*"([^"]+)"', text)
    assert len(envs) == n_rules - text.count("rule all:"), "a rule lacks a conda: directive"
    for env in envs:
        assert (rules_dir / env).resolve().is_file(), env
