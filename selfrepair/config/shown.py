"""Per model, the heads each experiment runs, as the storage estimate sizes their stores
(selfrepair.config.storage): the mechanism experiments, the ablate jobs' per-token heads and
repair_detail's."""

from __future__ import annotations

from typing import Any

__all__ = ["shown_heads"]


def shown_heads(config: dict[str, Any], models: dict[str, dict[str, Any]]) -> dict[str, dict]:
    """Per model, the heads each experiment runs (neurons, norms, reinforcement), ablate keeps
    per token and repair_detail keeps: fixed ones and the n a pick adds (at most)."""
    from selfrepair.config.attribution import attribution_heads
    from selfrepair.config.mechanisms import (
        TARGET_KEYS,
        mechanism_targets,
        per_token_ablations,
        per_token_targets,
    )
    from selfrepair.config.targets import figure_targets

    mech, figures = mechanism_targets(config), figure_targets(config)
    every = list(figures.values()) + [t for ts in mech.values() for t in ts]
    kind = {key: experiment for experiment, key, _ in TARGET_KEYS}
    per_token = [  # kept per token under top, in the variants read ("per_token <ablation>")
        (f"per_token {a}", t)
        for key, t in per_token_targets(figures, mech)
        for a in per_token_ablations(config, key)
    ]
    fixed: dict[str, dict[str, set]] = {m: {} for m in models}
    out: dict[str, dict[str, int]] = {m: {} for m in models}
    listed = [(kind[key], t) for key, targets in mech.items() for t in targets]
    for experiment, t in listed + per_token:
        if t.model in out:
            fixed[t.model].setdefault(experiment, set()).update(t.heads)
            out[t.model][experiment] = out[t.model].get(experiment, 0) + (t.pick or {}).get("n", 0)
    detail = attribution_heads(config, models, every)
    extra = config["figures"]["attribution"]["most_repaired"] + 1
    for m in out:
        out[m] = {e: len(heads) + out[m][e] for e, heads in fixed[m].items()}
        picks = sum(t.pick["n"] for t in every if t.model == m and t.picked)
        out[m]["detail"] = len(detail.get(m, [])) + picks + extra
    return out
