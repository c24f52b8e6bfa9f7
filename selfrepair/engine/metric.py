"""The metric attribution patching differentiates (engine.atp): a direction per scored position.

m[b, t] = x[b, t] . d[b, t] / s(x[b, t]) + c[b, t] on the final residual x (s: the final norm's
scale, models.readout), and a row's metric is sum_t w[b, t] m[b, t]. `TokenMetric` is the
paper's (d: the correct next token's unembedding column, every weight 1: the centred
correct-token logit at every position); a logit difference between answers a and b is
d = u_a - u_b, c = c_a - c_b (a task's counterfactuals), and answer positions are weights: the
same TokenMetric with `counter` and `weight` (engine.inputs.TaskInputs).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from jaxtyping import Float, Int
from torch import Tensor

from selfrepair.models.forward import dot
from selfrepair.models.readout import Readout

__all__ = ["Metric", "TokenMetric"]


@dataclass(frozen=True)
class Metric:
    """A direction per scored position: m[b, t] = x . direction / s(x) + const on the final
    residual x, and the row's metric sum_t weight[b, t] m[b, t]."""

    direction: Float[Tensor, "batch pos d_model"]
    const: Float[Tensor, "batch pos"]
    weight: Float[Tensor, "batch pos"]

    def per_position(self, ro: Readout, x: Float[Tensor, "batch pos d_model"]) -> Tensor:
        """m[b, t] on a final residual stream (differentiable)."""
        return dot(x, self.direction) / ro.scale(x) + self.const


@dataclass(frozen=True)
class TokenMetric:
    """The paper's metric on running text: the centred correct-next-token logit at every
    position (models.readout), each position weighted 1. Called with row indices into `tokens`
    ([rows, pos + 1]), it gives those rows' Metric. A task's: with `counter` ([rows, pos], its
    counterfactual tokens) the logit difference answer - counterfactual (Readout.directions),
    with `weight` ([rows, pos], its answer positions as 1) those positions only."""

    ro: Readout
    tokens: Int[Tensor, "rows pos_plus_1"]
    counter: Int[Tensor, "rows pos"] | None = None
    weight: Float[Tensor, "rows pos"] | None = None

    def __call__(self, rows: Int[Tensor, " batch"]) -> Metric:
        rows = rows.to(self.tokens.device)
        counter = None if self.counter is None else self.counter[rows]
        direction, const = self.ro.directions(self.tokens[rows, 1:], counter)
        if self.weight is None:
            return Metric(direction, const, torch.ones_like(const))
        return Metric(direction, const, self.weight[rows].to(const))
