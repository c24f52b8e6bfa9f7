"""Configuration helpers shared by the Snakefile and the scripts: validation messages that name
the key, model entries, and the row/shard layout that every stage agrees on."""

from __future__ import annotations

import functools
import importlib.util
import math
from pathlib import Path
from typing import Any

import jsonschema


class ConfigError(ValueError):
    """A configuration problem, stated in one line that names the key and the fix."""


def key_path(error: jsonschema.ValidationError) -> str:
    parts = [str(p) if not isinstance(p, int) else f"[{p}]" for p in error.absolute_path]
    return ".".join(parts).replace(".[", "[") or "(top level)"


def describe_validation_error(error: jsonschema.ValidationError) -> str:
    """One line naming the offending key, descending into oneOf/anyOf to the real cause: the
    branch whose type matches the value, and in it the most deeply nested error."""
    while error.context:
        branches: dict[Any, list[jsonschema.ValidationError]] = {}
        for sub in error.context:
            branches.setdefault(sub.relative_schema_path[0], []).append(sub)
        right_type = [
            errs
            for errs in branches.values()
            if not any(e.validator == "type" and not e.relative_path for e in errs)
        ]
        candidates = right_type[0] if len(right_type) == 1 else list(error.context)
        error = max(candidates, key=lambda e: len(e.absolute_path))
    if error.validator == "additionalProperties":
        return f"config key {key_path(error)}: {error.message} (see config/README.md)"
    return f"config key {key_path(error)}: {error.message}"


def validation_error_from(exc: BaseException) -> jsonschema.ValidationError | None:
    """The jsonschema error inside Snakemake's WorkflowError (or the error itself)."""
    if isinstance(exc, jsonschema.ValidationError):
        return exc
    for arg in getattr(exc, "args", ()):
        if isinstance(arg, jsonschema.ValidationError):
            return arg
    cause = exc.__cause__ or exc.__context__
    return validation_error_from(cause) if cause is not None else None


def model_entries(config: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Models by name; a bare string entry is a TransformerLens name with no options."""
    entries: dict[str, dict[str, Any]] = {}
    for item in config["models"]:
        entry = {"name": item} if isinstance(item, str) else dict(item)
        if entry["name"] in entries:
            raise ConfigError(f"config key models: {entry['name']!r} is listed twice")
        entries[entry["name"]] = entry
    for name, entry in entries.items():
        tok = entry.get("train", {}).get("tokenizer")
        if tok is not None and tok not in config.get("tokenizers", {}):
            raise ConfigError(
                f"config key models[{name}].train.tokenizer: {tok!r} is not defined under "
                "tokenizers"
            )
    return entries


@functools.cache
def _model_alias_map() -> dict[str, str]:
    """TransformerLens' alias -> Hugging Face name map, read from its registry file without
    importing transformer_lens (which takes seconds: the Snakefile is parsed by every job)."""
    spec = importlib.util.find_spec("transformer_lens")
    if spec is None or not spec.submodule_search_locations:
        raise ConfigError("transformer_lens is not installed: run the README's setup command")
    registry = Path(next(iter(spec.submodule_search_locations))) / "supported_models.py"
    namespace: dict[str, Any] = {}
    exec(compile(registry.read_text(), str(registry), "exec"), namespace)
    aliases = {}
    for official in namespace["OFFICIAL_MODEL_NAMES"]:
        for alias in namespace["MODEL_ALIASES"].get(official, []):
            aliases[alias.lower()] = official
        aliases[official.lower()] = official
    return aliases


def official_model_name(name: str) -> str:
    """The Hugging Face name of a TransformerLens model name or alias (e.g. pythia-160m ->
    EleutherAI/pythia-160m); ConfigError naming the fix when unknown."""
    try:
        return _model_alias_map()[name.lower()]
    except KeyError:
        raise ConfigError(
            f"config key models: unknown model {name!r}; use a TransformerLens name "
            "(e.g. gpt2-small, pythia-160m) or give the entry a `path` to a local Hugging "
            "Face checkpoint"
        ) from None


def check_hub_names(entries: dict[str, dict[str, Any]]) -> None:
    """Hub models must be TransformerLens names; checked offline, before any work starts."""
    for name, entry in entries.items():
        if "path" not in entry and "train" not in entry:
            official_model_name(name)


FROZEN_LN_SUFFIX = "-frozen-ln"


def parse_ablation(variant: str) -> tuple[str, bool]:
    """'mean' -> ('mean', False); 'mean-frozen-ln' -> ('mean', True)."""
    if variant.endswith(FROZEN_LN_SUFFIX):
        return variant[: -len(FROZEN_LN_SUFFIX)], True
    return variant, False


def n_rows(data: dict[str, Any]) -> int:
    """Rows of seq_len tokens holding at least n_tokens tokens (one more if the last shard
    would otherwise hold a single row, which has no other row to resample from)."""
    rows = math.ceil(data["n_tokens"] / data["seq_len"])
    return rows + 1 if rows % data["shard_rows"] == 1 else rows


def n_shards(data: dict[str, Any]) -> int:
    return math.ceil(n_rows(data) / data["shard_rows"])


def shard_bounds(data: dict[str, Any], shard: int) -> tuple[int, int]:
    """[start, stop) rows of a shard; the last shard may be shorter."""
    if not 0 <= shard < n_shards(data):
        raise ConfigError(f"shard {shard} does not exist: there are {n_shards(data)} shards")
    start = shard * data["shard_rows"]
    return start, min(start + data["shard_rows"], n_rows(data))
