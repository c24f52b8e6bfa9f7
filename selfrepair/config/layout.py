"""The row and shard layout every stage agrees on (rows of seq_len tokens, shards of
data.shard_rows rows, at most MAX_SHARDS per model), the size of a head's top-fraction selection,
the datasets (running text, or a task: one shard under tasks/<task>/), and (from
selfrepair.ablations) the names of the ablation variants."""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

from selfrepair.ablations import FROZEN_LN_SUFFIX
from selfrepair.ablations import parse_variant as parse_ablation
from selfrepair.ablations import variant as ablation_variant
from selfrepair.config.errors import ConfigError

__all__ = [
    "FROZEN_LN_SUFFIX",
    "MAX_SHARDS",
    "MIN_TOP_TOKENS",
    "TASK_SHARD",
    "ablation_variant",
    "ablation_variants",
    "check_checkpoint_shards",
    "check_shard_count",
    "check_top_tokens",
    "dataset_of",
    "dataset_task",
    "estimated_as",
    "job_task",
    "n_predictions",
    "n_rows",
    "n_shards",
    "parse_ablation",
    "predictions",
    "shard_bounds",
    "top_count",
]


# A dataset is where its stores lie below results/<model>/, the {dataset} wildcard of the rules
# that serve every dataset: "" for running text (its shards, paths as ever), "tasks/<task>/" for
# a task, whose prompts are one shard of this name.
TASK_SHARD = "000"


def dataset_of(task: str | None) -> str:
    """The {dataset} wildcard of a task (None: running text)."""
    return "" if task is None else f"tasks/{task}/"


def dataset_task(dataset: str) -> str | None:
    """The task a {dataset} wildcard names (None: running text)."""
    return dataset.removeprefix("tasks/").removesuffix("/") or None


def job_task(wildcards: dict[str, str]) -> str | None:
    """The task a job serves, from its wildcards: {task} or {dataset} (None: none)."""
    return wildcards.get("task") or dataset_task(wildcards.get("dataset", ""))


# The rules that serve every dataset, by the name the storage and time estimates size their
# task jobs under (a task's on its answers, config.tasks.task_shape; text's by its shard).
ON_TASK = {"clean_cache": "task_clean"}


def estimated_as(rule: str, wildcards: dict[str, str]) -> tuple[str, dict[str, str]]:
    """The rule and wildcards a job is estimated as: a task's job of a rule that serves every
    dataset as ON_TASK's name with its {task}, any other as it is."""
    task = job_task(wildcards)
    if task is None or rule not in ON_TASK:
        return rule, wildcards
    return ON_TASK[rule], {**wildcards, "task": task}


def ablation_variants(config: dict[str, Any]) -> list[str]:
    """Every ablation variant a text shard runs, in order: the config's ablations, then the
    frozen-LayerNorm ones of engine.frozen_ln (one ablate job runs them all)."""
    frozen = [ablation_variant(a, True) for a in config["engine"]["frozen_ln"]]
    return list(config["ablations"]) + frozen


def n_rows(data: dict[str, Any]) -> int:
    """Rows of seq_len tokens holding at least n_tokens tokens (one more if the last shard
    would otherwise hold a single row, which has no other row to resample from)."""
    rows = math.ceil(data["n_tokens"] / data["seq_len"])
    return rows + 1 if rows % data["shard_rows"] == 1 else rows


def n_shards(data: dict[str, Any]) -> int:
    """Shards of data.shard_rows rows that hold n_rows(data) rows."""
    return math.ceil(n_rows(data) / data["shard_rows"])


def shard_bounds(data: dict[str, Any], shard: int) -> tuple[int, int]:
    """[start, stop) rows of a shard; the last shard may be shorter."""
    if not 0 <= shard < n_shards(data):
        raise ConfigError(f"shard {shard} does not exist: there are {n_shards(data)} shards")
    start = shard * data["shard_rows"]
    return start, min(start + data["shard_rows"], n_rows(data))


def predictions(n_rows: int, seq_len: int) -> int:
    """Tokens measured in n_rows rows of seq_len tokens: each row predicts seq_len - 1 next
    tokens (its last token is only a target). The one place this is counted."""
    return n_rows * (seq_len - 1)


def n_predictions(data: dict[str, Any], shards: Iterable[int] | None = None) -> int:
    """Tokens measured per model (in the given shards; default every shard)."""
    if shards is None:
        return predictions(n_rows(data), data["seq_len"])
    rows = sum(stop - start for start, stop in (shard_bounds(data, s) for s in shards))
    return predictions(rows, data["seq_len"])


def top_count(n_tokens: int, fraction: float) -> int:
    """Tokens in a head's top fraction of n_tokens: ceil(fraction * n_tokens), at least 1 (the
    one definition: reduce.top_token_mask, the neuron stage and the captions count with it)."""
    if not 0 < fraction <= 1:
        raise ValueError(f"top_fraction must lie in (0, 1], got {fraction}")
    return max(1, math.ceil(fraction * n_tokens))


# A head's top-fraction selection (the paper's top 2%) averages over at least this many tokens;
# fewer and its means are noise.
MIN_TOP_TOKENS = 10


def check_top_tokens(data: dict[str, Any], fraction: float) -> None:
    """ConfigError naming data.n_tokens when a head's top fraction would hold fewer than
    MIN_TOP_TOKENS tokens, with the n_tokens that suffice.

    Args:
        data: the config's `data` section (n_tokens, seq_len, shard_rows).
        fraction: engine.top_fraction.
    """
    n = n_predictions(data)
    if fraction * n < MIN_TOP_TOKENS:
        need = math.ceil(MIN_TOP_TOKENS / fraction * data["seq_len"] / (data["seq_len"] - 1))
        raise ConfigError(
            f"config key data.n_tokens: {n} predicted tokens leave {fraction * n:.1f} in each "
            f"head's top {fraction:.0%} (engine.top_fraction), fewer than {MIN_TOP_TOKENS}; "
            f"raise data.n_tokens to at least {need}"
        )


# Every shard of every model is one clean_cache job and one ablate job per ablation variant, and
# Snakemake holds each job in memory while it plans: 1e9 tokens in the paper's shards are
# 190,000 jobs and more than 12 minutes of planning. So a model gets at most this many shards
# (the paper: 8; the demo: 2); larger runs take larger shards (data.shard_rows).
MAX_SHARDS = 256


def check_shard_count(data: dict[str, Any]) -> None:
    """ConfigError naming data.n_tokens and data.shard_rows when a model would get more than
    MAX_SHARDS shards, with the smallest shard_rows that fits.

    Args:
        data: the config's `data` section (n_tokens, seq_len, shard_rows).
    """
    shards = n_shards(data)
    if shards <= MAX_SHARDS:
        return
    need = math.ceil(n_rows(data) / MAX_SHARDS)
    raise ConfigError(
        f"config key data.n_tokens: {data['n_tokens']:,} tokens make {shards:,} shards of "
        f"data.shard_rows={data['shard_rows']} rows per model, more than {MAX_SHARDS} (one job "
        f"each per ablation; planning them would take minutes and gigabytes); raise "
        f"data.shard_rows to at least {need} or lower data.n_tokens"
    )


def check_checkpoint_shards(config: dict[str, Any]) -> None:
    """checkpoint_shards names the first shards measured at each training checkpoint: more than
    the run has is a mistake (it would quietly be every shard), named with both numbers.

    Args:
        config: the validated workflow config (checkpoint_shards, data).
    """
    wanted, shards = config.get("checkpoint_shards"), n_shards(config["data"])
    if wanted is not None and wanted > shards:
        raise ConfigError(
            f"config key checkpoint_shards: {wanted} shards asked for but data makes only "
            f"{shards} ({n_rows(config['data']):,} rows of {config['data']['shard_rows']} per "
            f"shard); set checkpoint_shards to at most {shards}, or null for every shard"
        )
