"""CoAx's single ablation and conditional ablation of each candidate head on a task's metric, in
logit-difference form (Gong 2026, `CoAblation.conditional_compensation` in
src/curvgraph/coablation.py, which measures the same two effects as a Fisher-weighted, centred
energy over the vocabulary):

    single_u      = metric(clean) - metric(u ablated)              (u's own effect, intact model)
    conditional_u = metric(S ablated) - metric(S and u ablated)    (u's effect once S is gone)

per token, the drop of the metric (the logit difference, or the correct logit). The single
ablations are measure_heads' passes; each conditional one is an exact joint pass of S + {u}
(engine.sets.measure_sets, which takes any named set), beside one of S alone.
analysis.conditional turns them into CoAx's compensation and amplification ratio.
The energy form, and both forms in one restarted pass per set keeping the answers' logits,
are engine.methods' (the method table).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING

import numpy as np
import xarray as xr
from jaxtyping import Int
from torch import Tensor

from selfrepair.engine.inputs import TaskInputs
from selfrepair.engine.self_repair import measure_heads
from selfrepair.engine.sets import measure_sets
from selfrepair.variables import head_label

if TYPE_CHECKING:
    from transformer_lens import HookedTransformer

__all__ = ["SET_ALONE", "conditional_sets", "measure_conditional"]

SET_ALONE = "set"  # the name of the pass with the set alone ablated (no head is named so)


def conditional_sets(
    members: Iterable[Sequence[int]], candidates: Iterable[Sequence[int]]
) -> dict[str, list[tuple[int, int]]]:
    """The sets a conditional measurement ablates: the set alone (SET_ALONE), and the set with
    each candidate (named by head_label); candidates inside the set are refused."""
    base = [(int(la), int(h)) for la, h in members]
    out = {SET_ALONE: base}
    for la, h in candidates:
        if (int(la), int(h)) in base:
            raise ValueError(f"candidate {head_label(la, h)} is in the set; leave it out")
        out[head_label(la, h)] = [*base, (int(la), int(h))]
    return out


def measure_conditional(
    model: HookedTransformer,
    tokens: Int[Tensor, "batch pos"],
    ablation: str,
    members: Iterable[Sequence[int]],
    candidates: Iterable[Sequence[int]] | None = None,
    *,
    batch_size: int | None = None,
    mean_include_bos: bool = True,
    fused: bool = True,
    task: TaskInputs | None = None,
) -> xr.Dataset:
    """Per candidate head and token, its single and conditional ablation effects (the drop of
    the metric; module docstring).

    Args:
        model: the HookedTransformer (not modified).
        tokens: [batch, pos + 1] token rows, each starting with BOS.
        ablation: as measure_sets ("corrupted", "resample", "mean", "zero").
        members: the set S, (layer, head) pairs.
        candidates: the heads scored; None: every head outside the set.
        batch_size, mean_include_bos, fused, task: as measure_sets.

    Returns:
        `single` and `conditional` with dims candidate (head labels; coordinates
        candidate_layer, candidate_head), batch, pos; `set_drop`, the drop with S alone
        ablated (batch, pos); attrs ablation, model, members.
    """
    members = [(int(la), int(h)) for la, h in members]
    n_layers, n_heads = model.cfg.n_layers, model.cfg.n_heads
    if candidates is None:
        every = [(la, h) for la in range(n_layers) for h in range(n_heads)]
        candidates = [c for c in every if c not in members]
    candidates = [(int(la), int(h)) for la, h in candidates]
    sets = conditional_sets(members, candidates)
    common = {"batch_size": batch_size, "mean_include_bos": mean_include_bos, "fused": fused}
    joint = measure_sets(model, tokens, ablation, sets, task=task, **common)
    alone = measure_heads(model, tokens, ablation, candidates, task=task, **common)
    # logit_diff is metric(ablated) - metric(clean): a drop is its negative
    with_set = joint.logit_diff.values
    single = np.stack([-alone.logit_diff.values[la, h] for la, h in candidates])
    conditional = with_set[0][None] - with_set[1:]
    labels = [head_label(la, h) for la, h in candidates]
    dims = ("candidate", "batch", "pos")
    return xr.Dataset(
        {
            "single": (dims, single),
            "conditional": (dims, conditional),
            "set_drop": (dims[1:], -with_set[0]),
        },
        coords={
            "candidate": labels,
            "candidate_layer": ("candidate", [la for la, _ in candidates]),
            "candidate_head": ("candidate", [h for _, h in candidates]),
        },
        attrs={"ablation": ablation, "model": model.cfg.model_name, "members": members},
    )
