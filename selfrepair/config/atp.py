"""The attribution-patching settings (engine.atp, figures.atp), checked against the run's
models: "missed among the exact top k" needs k below the number of heads measured."""

from __future__ import annotations

from typing import Any

from selfrepair.config.errors import ConfigError
from selfrepair.config.models import model_dims

__all__ = ["atp_settings"]


def atp_settings(config: dict[str, Any], models: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """figures.atp of a run (schema defaults filled in), its top_k checked to be below the heads
    each model measures (its `heads`, else every head where the config knows the model's size).

    Args:
        config: the run's config (schema defaults filled in).
        models: the run's model entries by name.
    """
    settings = dict(config["figures"]["atp"])
    if not config["engine"]["atp"]:
        return settings
    k = settings["top_k"]
    for name, entry in models.items():
        dims = model_dims(entry)
        measured = len(entry["heads"]) if entry.get("heads") else dims and dims[0] * dims[1]
        if measured == 1:
            raise ConfigError(
                f"config key models[].heads: {name} measures 1 head and attribution patching "
                "is judged by ranking heads; list at least 2 heads or set engine.atp: false"
            )
        if measured and k >= measured:
            raise ConfigError(
                f"config key figures.atp.top_k: {k} is not below the {measured} heads {name} "
                f"measures, so no head could be missed; set it to at most {measured - 1}"
            )
    return settings
