"""Where the workflow writes: every output lies inside the run's results/ or resources/ folder.

Names from the config become folders there (results/<model>, resources/tokenizers/<name>), and
Snakemake deletes a failed job's outputs and, with --force, existing ones, so a name or a link
that led elsewhere would let the workflow write or delete outside the project. The schema allows
only plain names ($defs.name); check_output_places refuses, at parse time, names that are the
workflow's own folders and links at the folders the names make; output_outside, from the
workflow's start, checks every output, log and benchmark file of the planned jobs. results/ and
resources/ themselves may be links (to a larger disk, say): what counts is what lies inside.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from selfrepair.ablations import KINDS, VARIANT_NAMES
from selfrepair.config.errors import ConfigError

__all__ = [
    "ABLATION_FOLDERS",
    "ABLATION_NAMES",
    "OUTPUT_ROOTS",
    "RESERVED_NAMES",
    "WORKFLOW_FOLDERS",
    "check_folder_names",
    "check_output_places",
    "output_outside",
]

OUTPUT_ROOTS = ("results", "resources")
# Folders of results/ that are not a model's: a model of one of these names would share them.
RESERVED_NAMES = frozenset({"tables", "figures", "explorer", "logs", "benchmarks"})
# Every folder name in the paths the workflow writes, the names from the config aside (models,
# tasks, tokenizers; the rules' own folders below logs/ and benchmarks/): a model or task of one
# of these names would make a path whose folders say two things (results/m/tasks/results/...),
# which a store's place and identity are read from (stages.integrity). tests/test_integrity.py
# checks this list against every folder of a dry run's outputs, logs and benchmarks.
ABLATION_FOLDERS = tuple(KINDS)
# The ablations' names as a path names them (ablation/<a>/, summary/<a>.zarr), frozen-LN ones too.
ABLATION_NAMES = VARIANT_NAMES
WORKFLOW_FOLDERS = frozenset(
    {
        *OUTPUT_ROOTS,
        *RESERVED_NAMES,
        *("models", "tokenizers", "weights"),  # resources/
        *("ablation", "attribution", "atp", "clean", "intervals", "neurons", "norms"),
        *("methods", "reinforcement", "sets", "substitutes", "summary", "tasks"),
        *ABLATION_NAMES,
    }
)


def _named_folders(
    config: dict[str, Any], entries: dict[str, dict[str, Any]]
) -> list[tuple[str, Path]]:
    """(config key, folder) of every folder the config's names make."""
    folders = [(f"models[{name}]", Path("results", name)) for name in entries]
    folders += [
        (f"models[{name}].train", Path("resources", "models", name))
        for name, entry in entries.items()
        if "train" in entry
    ]
    folders += [
        (f"tokenizers.{name}", Path("resources", "tokenizers", name))
        for name in config.get("tokenizers") or {}
    ]
    return folders


def check_folder_names(config: dict[str, Any], entries: dict[str, dict[str, Any]]) -> None:
    """Refuse, in one line naming the key, a model, task or tokenizer named like one of the
    folders the workflow writes itself (WORKFLOW_FOLDERS), anywhere in a path.

    Args:
        config: the validated workflow config.
        entries: every model key's entry (training checkpoints' too).
    """
    named = [(f"models[{name}]", name, "model") for name in entries]
    named += [(f"tasks.{name}", name, "task") for name in config.get("tasks") or {}]
    named += [(f"tokenizers.{name}", name, "tokenizer") for name in config.get("tokenizers") or {}]
    for key, name, what in named:
        if name in WORKFLOW_FOLDERS:
            raise ConfigError(
                f"config key {key}: {name!r} is a folder the workflow writes itself "
                f"({', '.join(sorted(WORKFLOW_FOLDERS))}); rename the {what}"
            )


def check_output_places(
    config: dict[str, Any], entries: dict[str, dict[str, Any]], workdir: str | os.PathLike = "."
) -> None:
    """Refuse, in one line naming the key, a name that is one of the workflow's own folders
    (check_folder_names) and a folder made by a name that exists as a link (or a link's target
    outside its root).

    Args:
        config: the validated workflow config.
        entries: every model key's entry (training checkpoints' too).
        workdir: the run's working directory (Snakemake's).
    """
    check_folder_names(config, entries)
    for key, folder in _named_folders(config, entries):
        path = Path(workdir) / folder
        if path.is_symlink():
            raise ConfigError(
                f"config key {key}: {folder} is a link (to {os.readlink(path)}); the workflow "
                f"writes and deletes there, so remove the link (link {folder.parts[0]}/ as a "
                "whole to keep outputs elsewhere)"
            )
        if problem := output_outside([folder], workdir):
            raise ConfigError(f"config key {key}: {problem}")


def output_outside(
    paths: Iterable[str | os.PathLike], workdir: str | os.PathLike = "."
) -> str | None:
    """Why one of `paths` (relative to workdir) would be written outside results/ or resources/
    once every link on its way is followed, or None when all lie inside.

    Args:
        paths: output, log and benchmark files of the planned jobs.
        workdir: the run's working directory.
    """
    workdir = Path(workdir)
    roots = {name: (workdir / name).resolve() for name in OUTPUT_ROOTS}
    for path in paths:
        given = Path(path)
        parts = given.parts
        if given.is_absolute() or not parts or parts[0] not in roots or ".." in parts:
            return f"{path} is not a path inside {' or '.join(f'{r}/' for r in OUTPUT_ROOTS)}"
        where = (workdir / given).resolve()
        if not where.is_relative_to(roots[parts[0]]):
            return (
                f"{path} leads to {where}, outside {parts[0]}/ (through a link on its way); "
                "remove the link"
            )
    return None
