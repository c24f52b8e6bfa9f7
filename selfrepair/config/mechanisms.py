"""The `mechanisms` section of the config: which model and heads each mechanism figure uses (the
paper's, or a named substitute when this run lacks them), resolved by the same resolver as
the `figures` section (selfrepair.config.targets) and checked before any job starts, with
one-line errors naming the key. No heavy imports: the Snakefile uses it.
"""

from __future__ import annotations

from typing import Any

from selfrepair.config.errors import ConfigError
from selfrepair.config.layout import n_rows
from selfrepair.config.models import Head, model_entries, text_models
from selfrepair.config.targets import (
    FigureTarget,
    check_distinct_targets,
    figure_ablation,
    resolve_target,
)

__all__ = [
    "TARGET_KEYS",
    "caption_label",
    "check_picks",
    "check_reinforcement_rows",
    "heads_by_model",
    "mechanism_targets",
    "per_token_ablations",
    "per_token_targets",
    "pick_targets",
]

# Where each experiment's targets live: (experiment, key, is a list of targets).
TARGET_KEYS = (
    ("neurons", "fig07", False),
    ("neurons", "fig08", True),
    ("neurons", "fig15", False),
    ("norms", "fig04", False),
    ("norms", "fig16_18", False),
    ("reinforcement", "fig09", False),
)


def mechanism_targets(config: dict[str, Any]) -> dict[str, list[FigureTarget]]:
    """Every target of the mechanisms section, by figure key (fig07, fig08, ...), resolved by
    the figures' resolver (selfrepair.config.targets.resolve_target) with each experiment's
    checks: the norms experiment reads the ablation stores (its heads must be measured), the
    neurons experiment needs heads that its MLP layer reads.

    Args:
        config: the validated workflow config.
    """
    entries = text_models(model_entries(config))  # a tasks_only model has no figures
    section = config["mechanisms"]
    out: dict[str, list[FigureTarget]] = {}
    for experiment, key, is_list in TARGET_KEYS:
        spec = section[experiment][key]
        specs = spec if is_list else [spec]
        path = f"mechanisms.{experiment}.{key}"
        checks = {
            "need_measured": experiment == "norms",
            "mlp_layer": section["neurons"]["mlp_layer"] if experiment == "neurons" else None,
        }
        out[key] = [
            resolve_target(entries, s, f"{path}[{i}]" if is_list else path, key, **checks)
            for i, s in enumerate(specs)
        ]
    check_distinct_targets("mechanisms.neurons.fig08", out["fig08"])
    check_picks(config, out)
    check_reinforcement_rows(config)
    return out


def check_picks(config: dict[str, Any], targets: dict[str, list[FigureTarget]]) -> None:
    """Picks the run can make: most_self_repressing reads the second-half heads of the
    reinforcement store, so second_half must be on; two fig08 entries picking by the same rule
    in the same model would show the same head twice (give one a higher `rank`)."""
    if any(t.picked for t in targets["fig09"]) and not config["mechanisms"]["reinforcement"].get(
        "second_half", True
    ):
        raise ConfigError(
            "config key mechanisms.reinforcement.fig09.substitute.pick: most_self_repressing "
            "ranks the second-half heads; set mechanisms.reinforcement.second_half: true"
        )
    seen: dict[tuple[Any, ...], str] = {}
    for target in targets["fig08"]:
        if target.picked:
            rule = (target.model, *sorted(target.pick.items()))
            if rule in seen:
                raise ConfigError(
                    f"config key {target.key}.substitute: picks the same head as {seen[rule]}; "
                    "set a different rank (rank: 2 is the second best)"
                )
            seen[rule] = target.key


def check_reinforcement_rows(config: dict[str, Any]) -> None:
    """The reinforcement experiment's rows fit in the token rows of the run."""
    section, data = config["mechanisms"]["reinforcement"], config["data"]
    if section["seq_len"] > data["seq_len"]:
        raise ConfigError(
            f"config key mechanisms.reinforcement.seq_len: {section['seq_len']} is longer than "
            f"the token rows (data.seq_len: {data['seq_len']})"
        )
    if section["rows"] > n_rows(data):
        raise ConfigError(
            f"config key mechanisms.reinforcement.rows: {section['rows']} rows asked, the data "
            f"has {n_rows(data)} (raise data.n_tokens or lower rows)"
        )


def heads_by_model(targets: list[FigureTarget]) -> dict[str, list[Head]]:
    """The heads each model runs for these targets, sorted, without repeats."""
    out: dict[str, set[Head]] = {}
    for target in targets:
        out.setdefault(target.model, set()).update(target.heads)
    return {model: sorted(heads) for model, heads in out.items()}


def per_token_targets(
    figures: dict[str, FigureTarget], mechanisms: dict[str, list[FigureTarget]]
) -> list[tuple[str, FigureTarget]]:
    """(pick key, target) of every figure and mechanism target that reads heads per token from
    the ablation stores (Figs 3 and 5, the norms of Figs 4 and 16-18): an ablate job under
    engine.store_tokens: top keeps every token of their heads.

    Args:
        figures: figure_targets(config).
        mechanisms: mechanism_targets(config).
    """
    return [(k, figures[k]) for k in ("fig03", "fig05")] + [
        (k, t) for k in ("fig04", "fig16_18") for t in mechanisms[k]
    ]


def per_token_ablations(config: dict[str, Any], key: str) -> list[str]:
    """The ablation variants (the ablate rule's `ablation`) whose stores the per-token target
    `key` (per_token_targets) reads: Fig 3 figures.ablation; Fig 5 and the norms every one of
    `ablations` (none reads the frozen-LayerNorm variants per token)."""
    return [figure_ablation(config)] if key == "fig03" else list(config["ablations"])


def pick_targets(targets: dict[str, list[FigureTarget]]) -> dict[str, FigureTarget]:
    """The picked targets by pick key: the figure key, with the list index for fig08
    (fig08-1); each is written to results/<model>/substitutes/<pick key>.json."""
    out = {}
    for key, listed in targets.items():
        for i, target in enumerate(listed):
            if target.picked:
                out[f"{key}-{i}" if key == "fig08" else key] = target
    return out


def caption_label(target: FigureTarget) -> str:
    """'pythia-160m L10H11', the shown model and heads."""
    return target.label(target.model, target.heads)
