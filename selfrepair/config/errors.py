"""Configuration errors: ConfigError, and the one-line message naming the key that a schema
validation error becomes. Light: jsonschema is imported only when an error is inspected (figure
scripts import the config package in the analysis environment, which has no jsonschema)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import jsonschema

__all__ = ["ConfigError", "describe_validation_error", "key_path", "validation_error_from"]


# The schema's pattern of model and tokenizer names ($defs.name).
NAME_PATTERN = "^[A-Za-z0-9][A-Za-z0-9._-]*$"


class ConfigError(ValueError):
    """A configuration problem, stated in one line that names the key and the fix."""


def key_path(error: jsonschema.ValidationError) -> str:
    """The config key of a validation error, e.g. models[5].heads[0]; (top level) for the root."""
    parts = [str(p) if not isinstance(p, int) else f"[{p}]" for p in error.absolute_path]
    return ".".join(parts).replace(".[", "[") or "(top level)"


def describe_validation_error(error: jsonschema.ValidationError) -> str:
    """One line naming the offending key, descending into oneOf/anyOf to the real cause: the
    branch whose type matches the value, and in it the most deeply nested error.

    Args:
        error: the schema's error (validation_error_from a Snakemake WorkflowError).
    """
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
    if error.validator == "not" and error.validator_value == {"required": ["path", "train"]}:
        return (
            f"config key {key_path(error)}: has both path and train; keep path (a checkpoint "
            "to load) or train (a model the workflow trains), not both"
        )
    if error.validator == "pattern" and error.validator_value == NAME_PATTERN:
        return (
            f"config key {key_path(error)}: {error.instance!r} cannot be a name: names become "
            "folders under results/ and resources/, so use letters, digits, '.', '_' and '-' "
            "only, starting with a letter or digit"
        )
    if error.validator == "additionalProperties":
        return f"config key {key_path(error)}: {error.message} (see config/README.md)"
    return f"config key {key_path(error)}: {error.message}"


def validation_error_from(exc: BaseException) -> jsonschema.ValidationError | None:
    """The jsonschema error inside Snakemake's WorkflowError (or the error itself), or None.

    Args:
        exc: what snakemake.utils.validate raised.
    """
    import jsonschema

    if isinstance(exc, jsonschema.ValidationError):
        return exc
    for arg in getattr(exc, "args", ()):
        if isinstance(arg, jsonschema.ValidationError):
            return arg
    cause = exc.__cause__ or exc.__context__
    return validation_error_from(cause) if cause is not None else None
