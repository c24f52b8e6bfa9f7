"""What one job of a model asks a cluster for: threads, memory and wall time, read from the
config (top-level `resources`, overridden per model) and grown on each retry, so that adding a
model, or a bigger one, needs no edit of the SLURM profile (profiles/slurm/config.yaml)."""

from __future__ import annotations

from typing import Any

__all__ = ["RESOURCE_KEYS", "mem_mb_for_attempt", "model_resources", "runtime_for_attempt"]

RESOURCE_KEYS = ("threads", "mem_mb", "runtime")


def model_resources(config: dict[str, Any], entry: dict[str, Any]) -> dict[str, int]:
    """threads, mem_mb and runtime (minutes) of one shard job of a model: the model entry's own
    `resources`, falling back key by key to the config's top-level `resources`."""
    defaults = config["resources"]
    own = entry.get("resources", {})
    return {key: int(own.get(key, defaults[key])) for key in RESOURCE_KEYS}


def mem_mb_for_attempt(mem_mb: int, attempt: int) -> int:
    """Memory of the n-th attempt (1-based): doubled on every retry, since a job that ran out
    of memory needs a real step up, not a few percent."""
    if attempt < 1:
        raise ValueError(f"attempt counts from 1, got {attempt}")
    return mem_mb * 2 ** (attempt - 1)


def runtime_for_attempt(runtime: int, attempt: int) -> int:
    """Wall time (minutes) of the n-th attempt: n times the first, for jobs killed at the
    limit by a slow or shared node."""
    if attempt < 1:
        raise ValueError(f"attempt counts from 1, got {attempt}")
    return runtime * attempt
