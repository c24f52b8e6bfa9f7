"""CoAx's scores of a candidate backup head from its single and conditional ablation effects
(engine.conditional; Gong 2026, `CoAblation.conditional_compensation` in
src/curvgraph/coablation.py), in logit-difference form: the mean over the answers of the drop of
the metric, single s_u with the candidate alone ablated, conditional c_u with it ablated once the
set is gone.

    compensation_u  = c_u - s_u          (CoAx's `comp = cond - single`)
    amplification_u = c_u / max(|s_u|, floor)

CoAx's energies are squares, never negative; here a drop has a sign, so the ratio divides by
|s_u| (its sign is c_u's) and by at least `floor`: a head whose own ablation does nothing would
otherwise divide by about 0 and rank first on noise. The floor defaults to RATIO_FLOOR of the
largest |s_u| among the candidates.

No I/O and no torch: the analysis environment runs these.
"""

from __future__ import annotations

import numpy as np
import xarray as xr

__all__ = ["RATIO_FLOOR", "amplification_ratio", "candidate_scores", "conditional_compensation"]

RATIO_FLOOR = 0.01


def conditional_compensation(single: np.ndarray, conditional: np.ndarray) -> np.ndarray:
    """How much each candidate's ablation effect grows once the set is gone: c - s."""
    return np.asarray(conditional) - np.asarray(single)


def amplification_ratio(
    single: np.ndarray, conditional: np.ndarray, floor: float | None = None
) -> np.ndarray:
    """c / max(|s|, floor), floor by default RATIO_FLOOR x the largest |s| (module docstring);
    NaN where the denominator is 0 (every candidate's single effect is 0 and no floor given)."""
    single, conditional = np.asarray(single, float), np.asarray(conditional, float)
    if floor is None:
        floor = RATIO_FLOOR * float(np.abs(single).max(initial=0.0))
    if floor < 0:
        raise ValueError(f"floor={floor} is negative; give a floor >= 0")
    denominator = np.maximum(np.abs(single), floor)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(denominator > 0, conditional / denominator, np.nan)


def candidate_scores(ds: xr.Dataset, dim: str = "token", floor: float | None = None) -> xr.Dataset:
    """Per candidate: the mean single and conditional drops over `dim` (the answers, after
    analysis.tasks.scored_tokens), their compensation and amplification ratio.

    Args:
        ds: engine.conditional.measure_conditional's single and conditional, narrowed to
            the answers (or any dataset with those two variables over candidate and `dim`).
        dim: the dimension averaged over.
        floor: the ratio's floor (default: amplification_ratio's).
    """
    single, conditional = ds.single.mean(dim), ds.conditional.mean(dim)
    out = xr.Dataset({"single": single, "conditional": conditional})
    out["compensation"] = ("candidate", conditional_compensation(single.values, conditional.values))
    ratio = amplification_ratio(single.values, conditional.values, floor)
    out["amplification_ratio"] = ("candidate", ratio)
    return out
