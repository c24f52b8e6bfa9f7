"""Sets of heads picked at run time (tasks.<task>.ablation_sets.<set>: {induction_score_top: k}
or {direct_effect_top: k}): numpy only, below the analysis and config packages, so the task
builders and the stages both read it without an import circle."""

from __future__ import annotations

import numpy as np

__all__ = ["largest_heads"]


def largest_heads(values, k: int, key: str) -> list[list[int]]:
    """[[layer, head], ...] of the k heads with the largest of `values` ([layer, head]; a tie
    broken by the earlier layer, then head), in layer then head order: a set picked at run
    time (tasks.<task>.ablation_sets.<set>: {key: k}; key names the config key in the error).
    """
    values = np.asarray(values, dtype=float)
    if not 1 <= k <= values.size:
        raise ValueError(f"{key} {k} must lie in [1, {values.size}] (the heads)")
    order = np.argsort(-values.ravel(), kind="stable")[:k]  # stable: row-major ties
    return [[int(i // values.shape[1]), int(i % values.shape[1])] for i in sorted(order)]
