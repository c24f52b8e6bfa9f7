"""Substitute heads picked at run time by the paper's own criteria (`substitute: {model, pick}`),
from the run's stores, so that a caption's claim about its substitute holds for this run:

- largest_top_de: late heads with the largest mean clean direct effect on their top tokens
  (the per-head summary's `top_de_clean`), as the paper chose its figure heads;
- most_self_repressing: the second-half head with the smallest self-reinforcement slope at the
  largest scale (the reinforcement store's `slope`), as the paper chose Fig 9's head.

Ties go to the lower layer, then the lower head. The pick record (JSON) holds the heads, the
values that selected them and the caption's phrase.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import xarray as xr

from selfrepair.config import Head, candidate_layers

__all__ = [
    "describe",
    "ordinal",
    "pick_largest_top_de",
    "pick_most_self_repressing",
    "pick_record",
    "rank_heads",
]

_LABEL = re.compile(r"^L(\d+)H(\d+)$")


def ordinal(rank: int) -> str:
    suffix = "th" if 10 <= rank % 100 <= 20 else {1: "st", 2: "nd", 3: "rd"}.get(rank % 10, "th")
    return f"{rank}{suffix}"


def rank_heads(
    values: Mapping[Head, float], n: int, rank: int = 1, largest: bool = True
) -> list[tuple[Head, float]]:
    """The heads ranked rank .. rank + n - 1 by value (1: the largest, or smallest when not
    `largest`), NaN left out, ties to the lower (layer, head).

    Args:
        values: value per candidate head.
        n: how many heads to return.
        rank: 1-based rank of the first head returned.
        largest: rank by descending value (else ascending).
    """
    finite = [(h, float(v)) for h, v in values.items() if not math.isnan(float(v))]
    order = sorted(finite, key=lambda hv: ((-hv[1] if largest else hv[1]), hv[0]))
    chosen = order[rank - 1 : rank - 1 + n]
    if len(chosen) < n:
        raise ValueError(
            f"{len(finite)} candidate heads with a value, fewer than rank + n - 1 = {rank + n - 1}"
        )
    return chosen


def pick_largest_top_de(summary: xr.Dataset, pick: Mapping[str, Any]) -> list[tuple[Head, float]]:
    """Heads of the candidate layers (config.candidate_layers) with the largest top_de_clean;
    heads the run did not measure (NaN) are never picked.

    Args:
        summary: per-head summary (dims layer, head) with `top_de_clean`.
        pick: config.pick_spec's dict (n, rank, layers, mlp_layer, parallel).
    """
    n_layers, n_heads = summary.sizes["layer"], summary.sizes["head"]
    top = summary["top_de_clean"].transpose("layer", "head").values
    layers = candidate_layers(n_layers, pick["layers"], pick.get("mlp_layer"), pick.get("parallel"))
    values = {(layer, h): top[layer, h] for layer in layers for h in range(n_heads)}
    return rank_heads(values, pick["n"], pick.get("rank", 1), largest=True)


def pick_most_self_repressing(
    reinforcement: xr.Dataset, pick: Mapping[str, Any]
) -> list[tuple[Head, float]]:
    """Second-half heads with the smallest slope of new on clean direct effect at the largest
    scale. The store holds every second-half head (second_half: true), so its deepest layer is
    the model's last.

    Args:
        reinforcement: the reinforcement store (dims head, scale; head labels L<l>H<h>).
        pick: config.pick_spec's dict (n, rank).
    """
    heads = [_parse(str(label)) for label in reinforcement["head"].values]
    n_layers = max(layer for layer, _ in heads) + 1
    largest = float(np.max(reinforcement["scale"].values))
    slope = reinforcement["slope"].sel(scale=largest).values
    values = {h: s for h, s in zip(heads, slope, strict=True) if h[0] >= n_layers // 2}
    return rank_heads(values, pick["n"], pick.get("rank", 1), largest=False)


def _parse(label: str) -> Head:
    match = _LABEL.match(label)
    if match is None:
        raise ValueError(f"head label {label!r} is not L<layer>H<head>")
    return int(match[1]), int(match[2])


def describe(pick: Mapping[str, Any], values: Sequence[float], extra: Mapping[str, Any]) -> str:
    """The caption's phrase for a pick, e.g. 'the most self-repressing second-half head (slope
    0.56 at s = 5)'.

    Args:
        pick: config.pick_spec's dict.
        values: the selecting values, in the order of the picked heads.
        extra: top_fraction and, for neuron figures, mlp (the MLP's layer) (largest_top_de),
            or scale (most_self_repressing).
    """
    n, rank = pick["n"], pick.get("rank", 1)
    nth = "" if rank == 1 else f"{ordinal(rank)}{'' if n == 1 else ' to ' + ordinal(rank + n - 1)} "
    if pick["criterion"] == "most_self_repressing":
        what = "head" if n == 1 else f"{n} heads"
        shown = ", ".join(f"{v:.2f}" for v in values)
        return (
            f"the {nth}most self-repressing second-half {what} "
            f"(slope {shown} at s = {extra['scale']:g})"
        )
    where = {"late": "late", "last": "last-layer"}[pick["layers"]]
    what = f"{where} head" if n == 1 else f"{n} {where} heads"
    if "mlp" in extra:
        what += f" read by the layer-{extra['mlp']} MLP"
    shown = ", ".join(f"{v:.2f}" for v in values)
    return (
        f"the {what} with the {nth}largest mean clean direct effect on "
        f"{'its' if n == 1 else 'their'} top {extra['top_fraction'] * 100:g}% tokens ({shown} logits)"
    )


def pick_record(
    model: str, key: str, pick: Mapping[str, Any], store: xr.Dataset, target: str = ""
) -> dict[str, Any]:
    """The pick record of one target: model, criterion, heads, their values and the caption
    phrase (describe), from the store the criterion reads.

    Args:
        model: the substitute model.
        key: the pick key (e.g. fig08-1), for messages.
        pick: config.pick_spec's dict.
        store: the per-head summary (largest_top_de) or reinforcement store.
        target: the target's config key (FigureTarget.key), which figure rules match.
    """
    if store.attrs.get("model", model) != model:
        raise ValueError(f"{key}: the store holds {store.attrs['model']!r}, not {model!r}")
    if pick["criterion"] == "largest_top_de":
        chosen = pick_largest_top_de(store, pick)
        extra = {"top_fraction": float(store.attrs.get("top_fraction", 0.02))}
        if pick.get("mlp_layer") is not None:
            extra["mlp"] = int(pick["mlp_layer"]) % store.sizes["layer"]
    elif pick["criterion"] == "most_self_repressing":
        chosen = pick_most_self_repressing(store, pick)
        extra = {"scale": float(np.max(store["scale"].values))}
    else:
        raise ValueError(f"{key}: unknown criterion {pick['criterion']!r}")
    values = [round(v, 6) for _, v in chosen]
    return {
        "key": key,
        "target": target,
        "model": model,
        "criterion": pick["criterion"],
        "pick": dict(pick),
        "heads": [list(h) for h, _ in chosen],
        "values": values,
        **extra,
        "description": describe(pick, values, extra),
    }
