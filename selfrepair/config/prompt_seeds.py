"""A task's prompt protocol, checked and expanded at parse time: IOI's `templates`, `names` and
`prepend_bos` (what holds without a BOS), and `prompt_seeds`, which makes one task entry per
seed (`<task>@seed<s>`, its prompts drawn with seed s) so that each seed's prompts and stores
are cached apart and rule method_seeds aggregates their method tables (CoAx's mean +- std over
prompt seeds). Pure: no I/O."""

from __future__ import annotations

from typing import Any

from selfrepair.ablations import KINDS, parse_variant
from selfrepair.config.errors import ConfigError

__all__ = ["check_task_protocol", "expand_prompt_seeds", "seed_task", "seeded_tasks"]

# IOI's prompt options and their defaults (absent from an entry that leaves them: a default
# run's task_spec, hence its stores' provenance and its jobs' params, stay as they were).
IOI_OPTIONS = {"templates": "wang", "names": "wang", "prepend_bos": True}


def seed_task(task: str, seed: int) -> str:
    """The task entry of one prompt seed ('@' is outside a config name, so no user task has
    it)."""
    return f"{task}@seed{seed}"


def check_task_protocol(tasks: dict[str, dict[str, Any]], mean_include_bos: bool) -> None:
    """Each task's prompt options fit its type and its ablations: templates, names and
    prepend_bos are IOI's; prompt_seeds draws generated prompts (not a file's); without BOS a
    mean ablation must average position 0 too (it is then a name, not BOS).

    Args:
        tasks: the validated config's tasks, before expand_prompt_seeds.
        mean_include_bos: engine.mean_include_bos.
    """
    for name, spec in tasks.items():
        key = f"config key tasks.{name}"
        if spec["type"] != "ioi" and (options := sorted(set(IOI_OPTIONS) & set(spec))):
            raise ConfigError(
                f"{key}.{options[0]}: only an ioi task has it ({spec['type']} rows start with "
                "BOS and have no templates); drop it here"
            )
        if spec["type"] == "prompts" and "prompt_seeds" in spec:
            raise ConfigError(
                f"{key}.prompt_seeds: a prompts task reads its file, no seed draws its prompts; "
                "drop prompt_seeds (or give one task per file)"
            )
        reads_mean = [a for a in spec["ablations"] if KINDS[parse_variant(a)[0]].reads_mean]
        if not spec.get("prepend_bos", True) and reads_mean and not mean_include_bos:
            raise ConfigError(
                f"{key}.prepend_bos: false leaves position 0 a name, which {reads_mean[0]} "
                "ablation's mean would skip as BOS under engine.mean_include_bos: false; set "
                "engine.mean_include_bos: true or keep prepend_bos"
            )


def expand_prompt_seeds(tasks: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """The tasks with each one of prompt_seeds replaced by one entry per seed, in the listed
    order: `<task>@seed<s>`, its entry with `prompt_seed: s` (build_task's seed) and
    `prompt_seeds_of: <task>`; other tasks unchanged."""
    out: dict[str, dict[str, Any]] = {}
    for name, spec in tasks.items():
        if "prompt_seeds" not in spec:
            out[name] = spec
            continue
        base = {k: v for k, v in spec.items() if k != "prompt_seeds"}
        for seed in spec["prompt_seeds"]:
            out[seed_task(name, seed)] = base | {"prompt_seed": seed, "prompt_seeds_of": name}
    return out


def seeded_tasks(tasks: dict[str, dict[str, Any]]) -> dict[str, list[str]]:
    """Each task of prompt_seeds -> its seeds' entries, in order (from expanded tasks)."""
    out: dict[str, list[str]] = {}
    for name, spec in tasks.items():
        if "prompt_seeds_of" in spec:
            out.setdefault(spec["prompt_seeds_of"], []).append(name)
    return out
