"""The `tasks` section (beyond the paper: self-repair on IOI, induction or a user's prompts),
checked before any job: at parse time what the config and the prompts file say (check_tasks),
at the workflow's start what the models' tokenizers make of them (check_task_prompts: names
that are single tokens, answers of one token, corrupted prompts of their prompt's length), each
problem in one line naming the key or file:line and the fix. No heavy imports at import time."""

from __future__ import annotations

from collections.abc import Collection
from pathlib import Path
from typing import Any

from selfrepair.ablations import KINDS, parse_variant
from selfrepair.config.errors import ConfigError
from selfrepair.config.models import missing_head, model_dims, text_models

__all__ = [
    "check_ablation_sets",
    "check_task_prompts",
    "check_tasks",
    "model_context",
    "task_heads",
    "task_models",
    "task_shape",
    "task_tokenizer_dir",
]


def task_models(config: dict[str, Any], entries: dict[str, dict[str, Any]]) -> dict[str, list]:
    """Each task's models: its `models`, or every model of the run."""
    return {name: list(spec.get("models") or entries) for name, spec in config["tasks"].items()}


def task_heads(spec: dict[str, Any]) -> list[tuple[str, list]]:
    """(config key suffix, heads) of every heads list of a task: sets, expected backups, roles."""
    sets = spec["ablation_sets"].items()  # a set {<by>_top: k}: picked at run time
    lists = [(f"ablation_sets.{n}", heads) for n, heads in sets if isinstance(heads, list)]
    if isinstance(spec["expected_backups"], list):  # else picked at run time, by their scores
        lists.append(("expected_backups", spec["expected_backups"]))
    return lists + [(f"roles.{role}", heads) for role, heads in spec["roles"].items()]


def _check_size(key: str, spec: dict[str, Any]) -> None:
    """The task's prompts within tasks.<name>.max_prompts (a file's lines counted, not parsed)."""
    from selfrepair.tasks.jsonl import count_prompts, missing_file

    limit = spec.get("max_prompts", 10000)
    if spec["type"] != "prompts":
        n = spec["n_prompts"]
        what = f"{key}.n_prompts: {n:,} prompts"
    elif missing_file(spec["file"]) is None:
        n = count_prompts(spec["file"])
        what = f"{key}.file: {spec['file']} has {n:,} prompts"
    else:
        return  # read_prompt_lines says it does not exist
    if n > limit:
        raise ConfigError(
            f"config key {what}, more than {key}.max_prompts ({limit:,}): every "
            "prompt is a row of every task job (each ablation runs every head on each); use "
            f"fewer prompts, or raise {key}.max_prompts if the run is meant to be that large"
        )


def _check_file(key: str, spec: dict[str, Any]) -> None:
    from selfrepair.tasks import TaskError
    from selfrepair.tasks.jsonl import prompt_file

    if spec["type"] == "prompts" and not spec.get("file"):
        raise ConfigError(f"config key {key}.file: a prompts task needs its JSONL file")
    if spec["type"] != "prompts" and spec.get("file"):
        raise ConfigError(f"config key {key}.file: only a prompts task reads a file")
    _check_size(key, spec)
    sets = spec["ablation_sets"].items()
    picked = [n for n, heads in sets if isinstance(heads, dict) and "induction_score_top" in heads]
    if picked and spec["type"] != "induction":
        raise ConfigError(
            f"config key {key}.ablation_sets.{picked[0]}: induction_score_top needs an induction "
            f"task (prefix-matching on its repeat), not {spec['type']}; list the heads instead"
        )
    if isinstance(spec["expected_backups"], dict) and spec["type"] != "induction":
        raise ConfigError(
            f"config key {key}.expected_backups: induction_score_above needs an induction task "
            f"(prefix-matching on its repeat), not {spec['type']}; list the heads instead"
        )
    try:  # every line checked, the file parsed once (prompt_file)
        facts = prompt_file(spec["file"]) if spec["type"] == "prompts" else None
    except TaskError as err:
        raise ConfigError(f"config key {key}.file: {err}") from None
    counterfactuals = spec["type"] == "ioi" if facts is None else facts.counterfactuals
    corrupted = facts is None or facts.corrupted
    if spec["metric"] == "logit_diff" and not counterfactuals:
        raise ConfigError(
            f"config key {key}.metric: logit_diff needs a counterfactual answer for every prompt "
            f"and {spec['type']} prompts {'lack some' if spec.get('file') else 'have none'}; "
            "use metric: correct_logit (or give every line a counterfactual)"
        )
    first = spec["ablations"][0]
    if spec["ablation_sets"] and parse_variant(first)[1]:
        raise ConfigError(
            f"config key {key}.ablations: the first ({first}) is the backup table's, whose joint "
            "sets (ablation_sets) run without frozen LayerNorm; put a kind without -frozen-ln "
            "first"
        )
    paired = [a for a in spec["ablations"] if KINDS[parse_variant(a)[0]].needs_corrupted]
    if paired and not corrupted:
        others = [name for name, kind in KINDS.items() if not kind.needs_corrupted]
        raise ConfigError(
            f"config key {key}.ablations: {paired[0]} needs a corrupted prompt on every line of "
            f"{spec['file']}; add them or choose {', '.join(others[:-1])} or {others[-1]}"
        )


def _check_heads(
    key: str, heads: list, models: Collection[str], entries: dict, fix: str = ""
) -> None:
    """No head twice, and each within every model whose size the config knows (`fix`: what the
    message adds after the missing head)."""
    if len({tuple(h) for h in heads}) != len(heads):
        raise ConfigError(f"config key {key}: a head is listed twice; list each once")
    for model in models:
        dims = model_dims(entries[model])
        for layer, head in heads if dims else ():
            if missing := missing_head(model, layer, head, *dims):
                raise ConfigError(f"config key {key}: {missing}{fix}")


def check_ablation_sets(config: dict[str, Any], entries: dict[str, dict[str, Any]]) -> None:
    """The running-text sets (top-level ablation_sets): each head once and within every model of
    the run whose size the config knows (but the tasks_only ones, which run no text), one line
    naming the key and the fix."""
    text = text_models(entries)
    for name, heads in config.get("ablation_sets", {}).items():
        fix = "; name heads of every model of the run, or drop the set"
        _check_heads(f"ablation_sets.{name}", heads, text, entries, fix)


def check_tasks(config: dict[str, Any], entries: dict[str, dict[str, Any]]) -> None:
    """Every task's models are the run's, its file reads (every line a prompt and a one-token
    answer field), its metric and ablations have what they need, and its heads exist in every
    model of the task whose size the config knows.

    Args:
        config: the validated workflow config.
        entries: its model entries (model_entries).
    """
    for name, models in task_models(config, entries).items():
        key, spec = f"tasks.{name}", config["tasks"][name]
        for model in models:
            if model not in entries:
                raise ConfigError(
                    f"config key {key}.models: {model!r} is not among this run's models; add "
                    "it to models or drop it here"
                )
        _check_file(key, spec)
        for suffix, heads in task_heads(spec):
            _check_heads(f"{key}.{suffix}", heads, models, entries)
        _check_picked_sets(key, spec, models, entries)


def _check_picked_sets(key: str, spec: dict, models: Collection[str], entries: dict) -> None:
    """A set picked at run time ({induction_score_top: k} or {direct_effect_top: k}) within
    every model's heads."""
    for name, pick in spec["ablation_sets"].items():
        for model in models if isinstance(pick, dict) else ():
            dims = model_dims(entries[model])
            (by, k), *_ = pick.items()  # the schema allows one key
            if dims and k > dims[0] * dims[1]:
                raise ConfigError(
                    f"config key {key}.ablation_sets.{name}.{by}: {k} is more than {model}'s "
                    f"{dims[0] * dims[1]} heads; lower it"
                )


def task_shape(
    config: dict[str, Any], spec: dict[str, Any], entry: dict[str, Any]
) -> tuple[int, int, int]:
    """(prompts, answers, row width in tokens) of a task on one model, before any tokenizer:
    induction's and IOI's from their keys; a prompts file's from its lines (jsonl.prompt_file),
    each row at most its longest prompt's bytes + 3 (SentencePiece's leading piece, BOS, the
    answer: a token is at least a byte) and at most the model's context + 1: an upper bound.

    Args:
        config: the validated workflow config.
        spec: the task's entry (tasks.<name>).
        entry: the model's entry.
    """
    if spec["type"] == "induction":
        n, length = spec["n_prompts"], spec["length"]
        return n, n * length, 1 + 2 * length
    if spec["type"] == "ioi":
        return spec["n_prompts"], spec["n_prompts"], 32
    from selfrepair.tasks.jsonl import prompt_file

    facts = prompt_file(spec["file"])
    width = facts.longest_bytes + 3
    n_ctx = model_context(config, entry)
    return facts.n_prompts, facts.n_prompts, width if n_ctx is None else min(width, n_ctx + 1)


def task_tokenizer_dir(entry: dict[str, Any], tokenizers: dict[str, Any]) -> str | None:
    """Where a model's tokenizer is before any job: a trained model's trained tokenizer folder
    (None while it is not trained yet), a path model's folder, else the hub name (None)."""
    train = entry.get("train")
    if train:
        folder = Path("resources", "tokenizers", train["tokenizer"])
        return str(folder) if folder.is_dir() else None
    return entry.get("path")


def model_context(config: dict[str, Any], entry: dict[str, Any]) -> int | None:
    """A model's context in positions as the config knows it before any job: a trained
    model's (train.n_ctx, else data.seq_len), a `path` model's config.json, a hub model's in
    the local Hugging Face cache; None for a hub model not cached (the task's clean_cache checks
    it once the model is loaded)."""
    import json

    from selfrepair.config.memory import CONTEXT_KEYS, cached_hub_entry

    entry = cached_hub_entry(entry)

    if "train" in entry:
        return int(entry["train"].get("n_ctx") or config["data"]["seq_len"])
    cfg_file = Path(entry["path"], "config.json") if entry.get("path") else None
    if cfg_file is None or not cfg_file.is_file():
        return None
    hf = json.loads(cfg_file.read_text(encoding="utf-8"))
    return next((hf[k] for k in CONTEXT_KEYS if isinstance(hf.get(k), int)), None)


def check_task_prompts(
    config: dict[str, Any],
    entries: dict[str, dict[str, Any]],
    tasks: Collection[str] | None = None,
) -> None:
    """Every task's prompts made with each of its models' tokenizers that exist before any job
    (hub and path models', a trained model's once its tokenizer is trained; the task's job
    makes the same check otherwise): ConfigError naming the task, the model and the fix.

    Args:
        config: the validated workflow config.
        entries: its model entries.
        tasks: the tasks to check (None: every task of the config).
    """
    if not config["tasks"]:
        return
    from selfrepair.data.tokens import load_tokenizer, special_ids
    from selfrepair.tasks import TaskError, build_task

    for name, models in task_models(config, entries).items():
        if tasks is not None and name not in tasks:
            continue
        for model in models:
            entry = entries[model]
            folder = task_tokenizer_dir(entry, config.get("tokenizers") or {})
            if "train" in entry and folder is None:
                continue
            tokenizer, _ = load_tokenizer(entry, folder)
            try:
                build_task(
                    config["tasks"][name],
                    tokenizer,
                    config["seed"],
                    special_ids(tokenizer)[0],
                    model_context(config, entry),
                )
            except TaskError as err:
                raise ConfigError(f"config key tasks.{name} ({model}'s tokenizer): {err}") from None
