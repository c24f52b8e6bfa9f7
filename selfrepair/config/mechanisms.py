"""The `mechanisms` section of the config: which model and heads each mechanism figure uses (the
paper's, or a named substitute when this run lacks them), resolved and checked before any job
starts, with one-line errors naming the key. No heavy imports: the Snakefile uses it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from selfrepair.config.core import (
    KNOWN_DIMS,
    ConfigError,
    FigureTarget,
    check_distinct_targets,
    missing_head,
    model_dims,
    model_entries,
    n_rows,
    pick_spec,
)

Head = tuple[int, int]

# Where each experiment's targets live: (experiment, key, is a list of targets).
TARGET_KEYS = (
    ("neurons", "fig07", False),
    ("neurons", "fig08", True),
    ("neurons", "fig15", False),
    ("norms", "fig04", False),
    ("norms", "fig16_18", False),
    ("reinforcement", "fig09", False),
)


# Hugging Face model types whose blocks TransformerLens runs with parallel attention and MLP
# (parallel_attn_mlp) without a use_parallel_residual key in config.json.
PARALLEL_TYPES = frozenset({"gptj", "phi"})


def parallel_blocks(entry: dict[str, Any]) -> bool | None:
    """Whether attention and MLP of a block read the same residual (Pythia), when known."""
    if "train" in entry:
        return entry["train"]["arch"] == "pythia"
    if "path" in entry:
        cfg_file = Path(entry["path"]) / "config.json"
        if cfg_file.is_file():
            hf = json.loads(cfg_file.read_text())
            return bool(hf.get("use_parallel_residual", hf.get("model_type") in PARALLEL_TYPES))
        return None
    name = entry["name"].lower()
    return True if name.startswith("pythia") else (False if name in KNOWN_DIMS else None)


def target_problem(
    entries: dict[str, dict[str, Any]],
    model: str,
    heads: tuple[Head, ...],
    need_measured: bool = False,
    mlp_layer: int | None = None,
) -> str | None:
    """Why (model, heads) cannot be used in this run, or None. need_measured: the experiment
    reads the ablation stage's stores, so a model entry's `heads` list must include them.
    mlp_layer: that MLP layer must read each head's output (it is above it, or in the same
    sequential block)."""
    if model not in entries:
        return f"{model} is not among this run's models"
    entry = entries[model]
    dims = model_dims(entry)
    measured = {tuple(h) for h in entry.get("heads", [])}
    # The key's fault, not the figure's; checked before any head, so also for picked heads.
    if mlp_layer is not None and dims is not None and not -dims[0] <= mlp_layer < dims[0]:
        raise ConfigError(
            f"config key mechanisms.neurons.mlp_layer: {model} has no MLP layer "
            f"{mlp_layer} ({dims[0]} layers); use -{dims[0]} .. {dims[0] - 1}"
        )
    for layer, head in heads:
        if dims is not None and (missing := missing_head(model, layer, head, *dims)):
            return missing
        if need_measured and measured and (layer, head) not in measured:
            return f"L{layer}H{head} is not among the heads measured in {model}"
        if mlp_layer is not None and dims is not None:
            mlp = mlp_layer % dims[0]
            parallel = parallel_blocks(entry)
            if mlp < layer or (mlp == layer and parallel):
                return (
                    f"the MLP of layer {mlp} does not read the output of L{layer}H{head} in "
                    f"{model}" + (" (parallel attention and MLP)" if parallel else "")
                )
    return None


def _heads(value: Any) -> tuple[Head, ...]:
    return tuple((int(layer), int(head)) for layer, head in (value or []))


def resolve_target(
    entries: dict[str, dict[str, Any]],
    spec: dict[str, Any],
    key: str,
    base_key: str | None = None,
    **checks: Any,
) -> FigureTarget:
    """The paper's model and heads of `spec`, or its substitute when this run lacks them (heads
    given, or picked at run time: config.pick_spec); ConfigError in one line naming `key` when
    neither can be used. base_key: the figure key (fig08 for fig08[1]); checks:
    target_problem's."""
    paper_model, paper_heads = spec["model"], _heads(spec.get("heads"))
    reason = target_problem(entries, paper_model, paper_heads, **checks)
    if reason is None:
        return FigureTarget(key, paper_model, paper_heads, paper_model, paper_heads)
    sub = spec.get("substitute")
    if sub is None:
        raise ConfigError(
            f"config key {key}.model: {reason}; add it to models or set {key}.substitute"
        )
    sub_heads = _heads(sub.get("heads"))
    sub_reason = target_problem(entries, sub["model"], sub_heads, **checks)
    if sub_reason is not None:
        raise ConfigError(f"config key {key}.substitute: {sub_reason}")
    if "pick" in sub:
        mlp_layer = checks.get("mlp_layer")
        entry = entries[sub["model"]]
        pick = pick_spec(
            key,
            base_key or key.rsplit(".", 1)[-1],
            sub,
            paper_heads,
            entry,
            mlp_layer=mlp_layer,
            parallel=parallel_blocks(entry) if mlp_layer is not None else None,
        )
        return FigureTarget(key, sub["model"], (), paper_model, paper_heads, reason, pick)
    return FigureTarget(key, sub["model"], sub_heads, paper_model, paper_heads, reason)


def mechanism_targets(config: dict[str, Any]) -> dict[str, list[FigureTarget]]:
    """Every target of the mechanisms section, by figure key (fig07, fig08, ...), resolved."""
    entries = model_entries(config)
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
