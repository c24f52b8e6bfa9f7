"""Checks of a run's config that the schema cannot make, before any job: check_run at parse time
(tokens, shards, corpus files, model entries, heads), and check_machine when the workflow starts
jobs on this machine (device/dtype against its CUDA devices)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from selfrepair.config.errors import ConfigError
from selfrepair.config.layout import (
    check_checkpoint_shards,
    check_shard_count,
    check_top_tokens,
)
from selfrepair.config.memory import check_model_memory
from selfrepair.config.models import (
    check_device_dtype,
    check_model_entry,
    device_problem,
    missing_head,
    model_dims,
)
from selfrepair.variables import head_label

__all__ = [
    "check_corpus_files",
    "check_distinct_heads",
    "check_frozen_ln",
    "check_machine",
    "check_repeats",
    "check_run",
    "check_tasks_only",
]


def check_run(config: dict[str, Any], entries: dict[str, dict[str, Any]]) -> None:
    """What the schema cannot check, before any work: enough tokens for the top-fraction
    selection, readable corpus files, and heads that exist in the models whose size the config
    can know (model_dims).

    Args:
        config: the validated workflow config.
        entries: its model entries (model_entries).
    """
    data = config["data"]
    check_top_tokens(data, config["engine"]["top_fraction"])
    check_shard_count(data)
    check_checkpoint_shards(config)
    check_device_dtype(config["device"], config["dtype"])
    check_frozen_ln(config)
    check_corpus_files(data["corpus"], "data.corpus")
    for name, tokenizer in (config.get("tokenizers") or {}).items():
        if "corpus" in tokenizer:
            check_corpus_files(tokenizer["corpus"], f"tokenizers.{name}.corpus")
    for name, entry in entries.items():
        check_model_entry(name, entry)
    check_model_memory(config, entries)
    check_distinct_heads(config)
    check_repeats(entries, data["seq_len"])
    for name, entry in entries.items():
        dims = model_dims(entry)
        if dims is None:
            continue  # other hub models: checked when the job loads them (check_model_fits)
        for layer, head in entry.get("heads") or []:
            if missing := missing_head(name, layer, head, *dims):
                raise ConfigError(f"config key models[{name}].heads: {missing}")


def check_repeats(entries: dict[str, dict[str, Any]], seq_len: int) -> None:
    """A trained model's induction-row keys (train.repeat_tokens, train.repeat_lengths) only
    with train.repeats, and its sequences (shortest <= longest) within a row after BOS and
    within the tokens drawn from, before train_model's job finds out.

    Args:
        entries: the model entries (model_entries).
        seq_len: data.seq_len, every training row's length.
    """
    for name, entry in entries.items():
        train = entry.get("train") or {}
        key = f"config key models[{name}].train"
        used = [k for k in ("repeat_tokens", "repeat_lengths") if train.get(k)]
        if used and not train.get("repeats"):
            raise ConfigError(f"{key}.{used[0]}: it shapes induction rows; set train.repeats too")
        shortest, longest = train.get("repeat_lengths") or (2, 2)
        row = train.get("n_ctx") or seq_len  # the model's training rows
        limit = min(row - 1, train.get("repeat_tokens") or row)
        if not shortest <= longest <= limit:
            raise ConfigError(
                f"{key}.repeat_lengths: [{shortest}, {longest}] must be increasing and at most "
                f"{limit} (train.n_ctx or data.seq_len, less BOS: {row - 1} tokens, and "
                "train.repeat_tokens); lower it"
            )


def check_tasks_only(config: dict[str, Any], entries: dict[str, dict[str, Any]]) -> None:
    """A tasks_only model is measured by a task and has no checkpoints (those are measured on
    text); a trained model's context (train.n_ctx) is shorter than data.seq_len only if it is
    tasks_only (text rows would not fit), and only a pythia model ties its embeddings.

    Args:
        config: the validated workflow config.
        entries: its model entries (model_entries).
    """
    from selfrepair.config.tasks import task_models

    measured = {m for models in task_models(config, entries).values() for m in models}
    seq_len = config["data"]["seq_len"]
    for name, entry in entries.items():
        key, train = f"config key models[{name}]", entry.get("train") or {}
        if entry.get("tasks_only"):
            if name not in measured:
                raise ConfigError(
                    f"{key}.tasks_only: no task measures it; add it to a task's "
                    "models or drop the model"
                )
            kept = [k for k in ("revisions", "checkpoints") if entry.get(k)]
            kept += ["train.keep_steps"] if train.get("keep_steps") else []
            if kept:
                raise ConfigError(
                    f"{key}.{kept[0]}: checkpoints are measured on text, which "
                    "a tasks_only model skips; drop it"
                )
        elif (train.get("n_ctx") or seq_len) < seq_len:
            raise ConfigError(
                f"{key}.train.n_ctx: {train['n_ctx']} is shorter than the text rows "
                f"(data.seq_len {seq_len}); raise it, or set tasks_only: true"
            )
        if train.get("tie_embeddings") and train["arch"] != "pythia":
            raise ConfigError(
                f"{key}.train.tie_embeddings: {train['arch']} models are always tied; drop it"
            )


def check_corpus_files(corpus: dict[str, Any], key: str) -> None:
    """A text-file corpus must be readable now, not when the tokenize job opens it.

    Args:
        corpus: a corpus mapping (data.corpus, tokenizers.<name>.corpus).
        key: its config key, named by the error.
    """
    if corpus.get("source") != "text_files":
        return
    if not corpus.get("files"):
        raise ConfigError(
            f"config key {key}.files: empty; list the plain-text or .jsonl files of the corpus "
            f"(or set {key}.source to hub or python_stdlib)"
        )
    for index, name in enumerate(corpus.get("files") or []):
        path = Path(name)
        problem = (
            "does not exist"
            if not path.exists()
            else "is not a file"
            if not path.is_file()
            else "is not readable"
            if not os.access(path, os.R_OK)
            else None
        )
        if problem:
            raise ConfigError(f"config key {key}.files[{index}]: {name!r} {problem}")


def check_frozen_ln(config: dict[str, Any]) -> None:
    """engine.frozen_ln reruns ablations of the run, which must therefore be among them."""
    ablations, frozen = config["ablations"], config["engine"].get("frozen_ln", [])
    for index, ablation in enumerate(frozen):
        if ablation not in ablations:
            raise ConfigError(
                f"config key engine.frozen_ln[{index}]: {ablation} is not among ablations "
                f"{ablations}; add it to ablations or drop it from engine.frozen_ln "
                f"(engine.frozen_ln: [] runs none)"
            )


def _head_lists(config: dict[str, Any]) -> list[tuple[str, Any]]:
    """(config key, heads list) of every heads list of models, figures and mechanisms."""
    lists = []
    for item in config.get("models", []):
        if isinstance(item, dict) and item.get("heads"):
            lists.append((f"models[{item['name']}].heads", item["heads"]))

    def targets(prefix: str, spec: Any) -> None:
        if not isinstance(spec, dict):
            return
        if spec.get("heads"):
            lists.append((f"{prefix}.heads", spec["heads"]))
        sub = spec.get("substitute")
        if isinstance(sub, dict) and sub.get("heads"):
            lists.append((f"{prefix}.substitute.heads", sub["heads"]))

    for key, spec in (config.get("figures") or {}).items():
        if key == "attribution":  # not a figure target: extra heads by model
            for model, heads in ((spec or {}).get("heads") or {}).items():
                lists.append((f"figures.attribution.heads.{model}", heads))
            continue
        targets(f"figures.{key}", spec)
    for experiment, section in (config.get("mechanisms") or {}).items():
        for key, spec in (section or {}).items() if isinstance(section, dict) else ():
            if isinstance(spec, list):
                for index, item in enumerate(spec):
                    targets(f"mechanisms.{experiment}.{key}[{index}]", item)
            else:
                targets(f"mechanisms.{experiment}.{key}", spec)
    return lists


def check_distinct_heads(config: dict[str, Any]) -> None:
    """No heads list names a head twice (a figure would draw it twice, a store index it twice).

    Args:
        config: the validated workflow config.
    """
    for key, heads in _head_lists(config):
        seen = set()
        for layer, head in heads:
            if (layer, head) in seen:
                raise ConfigError(
                    f"config key {key}: {head_label(layer, head)} is listed twice; list it once"
                )
            seen.add((layer, head))


def check_machine(config: dict[str, Any]) -> None:
    """device/dtype against this machine's CUDA devices, for a run whose jobs run here (imports
    torch, so only the workflow's start calls it, not every job's parse).

    Args:
        config: the validated workflow config.
    """
    device, dtype = config["device"], config["dtype"]
    if device == "cpu" or (device == "auto" and dtype == "float32"):
        return  # nothing this machine could lack
    import torch

    n_cuda = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if problem := device_problem(device, dtype, n_cuda):
        raise ConfigError(problem)
