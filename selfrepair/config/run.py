"""The workflow's entry to the config: validate_run at parse time (the schema, then the checks
the schema cannot make) and check_before_jobs when the workflow starts (machine and hub)."""

from __future__ import annotations

import copy
from collections.abc import Collection, Iterable
from pathlib import Path
from typing import Any

from selfrepair.config.checkpoints import check_checkpoints, checkpoint_models
from selfrepair.config.checks import check_machine, check_run, check_tasks_only
from selfrepair.config.errors import ConfigError, describe_validation_error, validation_error_from
from selfrepair.config.hub import check_hub_access
from selfrepair.config.inputs import check_path_tokenizers
from selfrepair.config.models import (
    check_hub_names,
    model_entries,
    pickled_weights_message,
    pickled_weights_problem,
)
from selfrepair.config.places import check_output_places, output_outside
from selfrepair.config.prompt_seeds import check_task_protocol, expand_prompt_seeds
from selfrepair.config.tasks import check_ablation_sets, check_task_prompts, check_tasks

__all__ = [
    "SCHEMA",
    "check_before_jobs",
    "check_planned_outputs",
    "merged_config",
    "validate_run",
]

# The workflow's config schema, beside the package in the repository (workflow/schemas).
SCHEMA = Path(__file__).resolve().parents[2] / "workflow" / "schemas" / "config.schema.yaml"


def merged_config(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    """Snakemake's --configfile merge: mappings key by key, everything else (lists too)
    replaced."""
    out = copy.deepcopy(base)
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merged_config(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def validate_run(config: dict[str, Any], schema: str | Path = SCHEMA) -> dict[str, dict[str, Any]]:
    """Validate the config against the schema (filling in its defaults, in place), then make
    the checks the schema cannot (check_hub_names, check_run, check_checkpoints); a problem is a ConfigError in one
    line naming the key.

    Args:
        config: the workflow config, as Snakemake merged it from the --configfile files.
        schema: the schema file; an absolute path (Snakemake reads a relative one relative to
            the caller's file, which would be this module).

    Returns:
        The model entries by name (model_entries), which the rules call MODELS.
    """
    # Snakemake's validate, not jsonschema's: it fills in the schema's defaults.
    from snakemake.utils import validate

    try:
        validate(config, schema=str(schema))
    except Exception as err:
        detail = validation_error_from(err)
        if detail is None:
            raise
        raise ConfigError(describe_validation_error(detail)) from None
    entries = model_entries(config)
    check_hub_names(entries)
    check_run(config, entries)
    check_path_tokenizers(entries)
    check_tasks(config, entries)
    check_tasks_only(config, entries)
    check_task_protocol(config["tasks"], config["engine"]["mean_include_bos"])
    # One task entry per prompt seed from here on (every rule and check sees plain tasks).
    config["tasks"] = expand_prompt_seeds(config["tasks"])
    check_ablation_sets(config, entries)
    check_checkpoints(entries)
    check_output_places(config, entries | checkpoint_models(entries))
    return entries


def check_before_jobs(
    config: dict[str, Any],
    entries: dict[str, dict[str, Any]],
    local_exec: bool,
    tasks: Collection[str] | None = None,
) -> None:
    """The checks that need the machine or the hub, after planning and before the first job
    (the Snakefile's onstart): device/dtype only when the jobs run here (on a cluster the login
    node says nothing about the nodes), local weights that load, hub access, then the tasks'
    prompts with every tokenizer there is before any job (check_task_prompts).

    Args:
        config: the validated workflow config.
        entries: its model entries (validate_run's result).
        local_exec: whether the jobs run on this machine (workflow.local_exec).
        tasks: the tasks the planned jobs serve (None: every task): a run that builds no job of
            a task (e.g. a resumed run of other targets) is not stopped by its prompts.
    """
    if local_exec:
        check_machine(config)
    check_local_weights(entries)
    check_hub_access(config, entries)
    check_task_prompts(config, entries, tasks)


def check_local_weights(entries: dict[str, dict[str, Any]]) -> None:
    """Every local checkpoint folder (a `path` model's, its `checkpoints`) holds weights that
    load: safetensors, or pickles of tensors only (models.pickled_weights_problem).

    Args:
        entries: the model entries by name.
    """
    for name, entry in entries.items():
        folders = [(f"models[{name}].path", entry.get("path"))]
        folders += [
            (f"models[{name}].checkpoints[{i}].path", c["path"])
            for i, c in enumerate(entry.get("checkpoints") or [])
        ]
        for key, folder in folders:
            if folder and (problem := pickled_weights_problem(folder)):
                raise ConfigError(pickled_weights_message(folder, problem, key))


def check_planned_outputs(jobs: Iterable[Any]) -> None:
    """Every output, log and benchmark file of the planned jobs lies inside results/ or
    resources/ with every link on its way followed (places.output_outside), before Snakemake
    writes, or deletes, any of them.

    Args:
        jobs: the planned jobs (workflow.dag.needrun_jobs()).
    """
    paths = []
    for job in jobs:
        paths += [*job.output, *job.log]
        if job.benchmark:
            paths.append(job.benchmark)
    if problem := output_outside(paths):
        raise ConfigError(problem)
