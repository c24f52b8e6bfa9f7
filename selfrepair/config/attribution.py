"""Which heads the who-repairs-whom detail keeps per token (figures.attribution): every head a
figure or mechanism target shows in the model, and the heads named under
figures.attribution.heads, checked against the model's size. The heads picked at run time join
from their pick records, and the most self-repaired heads from the repair summary (rule
repair_detail)."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from selfrepair.config.errors import ConfigError
from selfrepair.config.models import Head, missing_head, model_dims
from selfrepair.config.targets import FigureTarget

__all__ = ["attribution_heads"]


def attribution_heads(
    config: dict[str, Any], models: dict[str, dict[str, Any]], targets: Iterable[FigureTarget]
) -> dict[str, list[Head]]:
    """Per model of the run, the heads its repair_detail keeps besides picks and the most
    repaired ones: the fixed heads of the targets shown in it and figures.attribution.heads.

    Args:
        config: the run's config (schema defaults filled in).
        models: the run's model entries by name.
        targets: every figure and mechanism target of the run.
    """
    out: dict[str, set[Head]] = {model: set() for model in models}
    for target in targets:
        if target.model in out:
            out[target.model].update(target.heads)
    named = config["figures"].get("attribution", {}).get("heads", {})
    for model, heads in named.items():
        key = f"figures.attribution.heads.{model}"
        if model not in models:
            raise ConfigError(f"config key {key}: {model!r} is not one of the run's models")
        dims = model_dims(models[model])
        for layer, head in heads:
            problem = dims and missing_head(model, layer, head, *dims)
            if problem:
                raise ConfigError(f"config key {key}: {problem}")
            out[model].add((int(layer), int(head)))
    return {model: sorted(heads) for model, heads in out.items()}
