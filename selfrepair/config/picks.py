"""Substitute heads picked at run time (`substitute: {model, pick, n, rank}`): the paper's
criteria, which figures accept which, the candidate layers, and the checked pick spec that
selfrepair.analysis.substitutes carries out on the run's stores."""

from __future__ import annotations

from typing import Any

from selfrepair.config.errors import ConfigError
from selfrepair.config.models import Head, model_dims

__all__ = [
    "PICKABLE",
    "PICK_CRITERIA",
    "candidate_layers",
    "pick_spec",
]

# Run-time picks of substitute heads (`substitute: {model, pick}`), by the paper's own criterion;
# selfrepair.analysis.substitutes computes them from the run's stores.
PICK_CRITERIA = {
    "largest_top_de": "per-head summaries: late heads by mean clean direct effect on their top tokens",
    "most_self_repressing": "reinforcement store: second-half heads by slope at the largest scale",
}
# The criteria each figure key accepts, which layers its candidates come from ("late": the
# second half of the layers, "last": the last layer, as the paper's Fig 5 head), and whether it
# shows exactly one head.
PICKABLE = {
    "fig03": (("largest_top_de",), "late", False),
    "fig05": (("largest_top_de",), "last", True),
    "fig04": (("largest_top_de",), "late", True),
    "fig16_18": (("largest_top_de",), "late", False),
    "fig07": (("largest_top_de",), "late", True),
    "fig08": (("largest_top_de",), "late", True),
    "fig15": (("largest_top_de",), "late", True),
    "fig09": (("most_self_repressing",), "late", True),
}


def candidate_layers(
    n_layers: int, layers: str, mlp_layer: int | None = None, parallel: bool | None = None
) -> list[int]:
    """Layers a pick may choose heads from: "late" (the second half, n_layers // 2 and up) or
    "last"; with mlp_layer, only those whose heads that MLP reads (below it, or in its own
    layer when attention and MLP are sequential; unknown counts as parallel)."""
    chosen = range(n_layers // 2, n_layers) if layers == "late" else range(n_layers - 1, n_layers)
    if mlp_layer is None:
        return list(chosen)
    mlp = mlp_layer % n_layers
    return [layer for layer in chosen if layer < mlp or (layer == mlp and parallel is False)]


def pick_spec(
    key: str,
    base_key: str,
    sub: dict[str, Any],
    paper_heads: tuple[Head, ...],
    entry: dict[str, Any] | None,
    mlp_layer: int | None = None,
    parallel: bool | None = None,
) -> dict[str, Any]:
    """The checked pick of `substitute: {model, pick, n, rank}` at config key `key`; ConfigError
    in one line naming the key otherwise.

    Args:
        key: the target's config key, e.g. figures.fig08 or mechanisms.neurons.fig08[1].
        base_key: the figure key, e.g. fig08 (what PICKABLE is keyed by).
        sub: the `substitute` mapping.
        paper_heads: the paper's heads (the default number of heads to pick).
        entry: the substitute model's entry, or None when unknown.
        mlp_layer: the MLP layer that must read each picked head (mechanisms.neurons), or None.
        parallel: whether that model's attention and MLP are parallel (None: unknown).
    """
    if "heads" in sub:
        raise ConfigError(f"config key {key}.substitute: give either heads or pick, not both")
    if base_key not in PICKABLE:
        raise ConfigError(
            f"config key {key}.substitute.pick: {base_key} shows no heads to pick; remove pick"
        )
    allowed, layers, single = PICKABLE[base_key]
    criterion = sub["pick"]
    if criterion not in allowed:
        raise ConfigError(
            f"config key {key}.substitute.pick: unknown criterion {criterion!r} for {base_key}; "
            f"use {' or '.join(allowed)}"
        )
    n = int(sub.get("n", max(1, len(paper_heads))))
    if single and n != 1:
        raise ConfigError(f"config key {key}.substitute.n: {base_key} shows one head; set n: 1")
    spec = {
        "criterion": criterion,
        "n": n,
        "rank": int(sub.get("rank", 1)),
        "layers": layers,
        "mlp_layer": mlp_layer,
        "parallel": parallel,
    }
    dims = model_dims(entry) if entry is not None else None
    if dims is not None:
        n_candidates = _candidate_count(entry, dims, layers, mlp_layer, parallel)
        if n_candidates < spec["rank"] + n - 1:
            raise ConfigError(
                f"config key {key}.substitute: {sub['model']} has {n_candidates} candidate heads "
                f"for {criterion}, fewer than rank + n - 1 = {spec['rank'] + n - 1}"
            )
    return spec


def _candidate_count(
    entry: dict[str, Any],
    dims: tuple[int, int],
    layers: str,
    mlp_layer: int | None,
    parallel: bool | None,
) -> int:
    """Heads a pick could choose in this model: those of the candidate layers, and among the
    entry's measured `heads` when it lists them (a pick reads the stores of measured heads)."""
    measured = {tuple(h) for h in entry.get("heads") or []}
    return sum(
        1
        for layer in candidate_layers(dims[0], layers, mlp_layer, parallel)
        for head in range(dims[1])
        if not measured or (layer, head) in measured
    )
