"""The forward graphs attribution patching differentiates (engine.atp), one per batch of rows
for a group of ablation kinds, and each kind's z' - z on it.

A kind that takes z from other rows runs them after the batch's own rows with metric weight 0
(engine.ablation's with_partners, _pool). Only z' - z depends on the kind, so the kinds of a
group share the batch's graph and every backward pass from it; the graph then runs every kind's
partner rows. Rows do not interact, so the batch's own rows' numbers are those of a run without
the others' partners (tests/test_atp_kinds.py checks the estimates bitwise); `pass_groups`
with shared=False keeps one graph per group of kinds that run the same rows anyway.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from typing import TYPE_CHECKING

import numpy as np
import torch
from jaxtyping import Float
from torch import Tensor

from selfrepair.ablations import TASK, ablation_kind
from selfrepair.engine.ablation import _pool, _row_index, ablated_z, with_partners
from selfrepair.engine.gradients import GradPass, grad_pass
from selfrepair.engine.inputs import TaskInputs
from selfrepair.engine.metric import Metric, TokenMetric
from selfrepair.models.readout import Readout, readout

if TYPE_CHECKING:
    from transformer_lens import HookedTransformer

__all__ = ["check_scored", "group_batches", "pass_groups", "run_rows_of", "z_changes"]


def pass_groups(ablations: Sequence[str], shared: bool = True) -> list[list[str]]:
    """The kinds that share each batch's forward graph and backward passes: all of them
    (`shared`), or those that run the same rows (the same partner pool: engine.ablation)."""
    if shared:
        return [list(ablations)]
    groups: dict[str | None, list[str]] = {}
    for name in ablations:
        groups.setdefault(ablation_kind(name).partner_pool, []).append(name)
    return list(groups.values())


def check_scored(scored: np.ndarray | None, tokens: Tensor) -> None:
    """The scored positions, when given, are [rows, pos] of the tokens; fails naming the shape."""
    shape = (tokens.shape[0], tokens.shape[1] - 1)
    if scored is not None and np.shape(scored) != shape:
        raise ValueError(f"scored must be [rows, pos] {shape}")


def _weights(scored: np.ndarray | None, pool: Tensor, n_rows: int) -> Tensor | None:
    """The metric's weight of every pool row ([pool rows, pos]): 1 at the scored positions of
    the measured rows, 0 elsewhere and on the partner rows after them; None (every position
    weighted 1) without `scored`."""
    if scored is None:
        return None
    check_scored(scored, pool[:n_rows])
    weight = torch.zeros(pool.shape[0], pool.shape[1] - 1, device=pool.device)
    weight[: scored.shape[0]] = torch.from_numpy(np.asarray(scored, bool)).to(weight)
    return weight


def group_batches(
    model: HookedTransformer,
    tokens: Tensor,
    group: list[str],
    sources: dict[str, Tensor | None],
    z_means: dict[str, dict[int, Tensor]],
    metric: Callable[[Tensor], Metric] | None,
    task: TaskInputs | None,
    scored: np.ndarray | None,
    batch_size: int,
    fused: bool,
) -> Iterator[tuple[Tensor, GradPass, list[dict[int, Tensor]], Tensor]]:
    """Per batch of rows, the group's forward graph, each kind's z' - z and the metric's
    weights, over the pool of rows its kinds take partners from (engine.ablation's _pool: the
    tokens, then a task's corrupted prompts when one of them takes z from those)."""
    n_rows = tokens.shape[0]
    widest = max(group, key=lambda name: ablation_kind(name).partner_pool == TASK)
    pool, counter, _ = _pool(tokens, ablation_kind(widest), sources[widest], task)
    ro = readout(model)
    metric = metric or TokenMetric(ro, pool, counter, _weights(scored, pool, n_rows))
    for start in range(0, n_rows, batch_size):
        rows = torch.arange(start, min(start + batch_size, n_rows))
        yield (
            rows,
            *_batch_pass(model, pool, ro, metric, rows, group, sources, z_means, fused, task),
        )


def _batch_pass(
    model: HookedTransformer,
    tokens: Tensor,
    ro: Readout,
    metric: Callable[[Tensor], Metric],
    rows: Tensor,
    ablations: list[str],
    sources: dict[str, Tensor | None],
    z_means: dict[str, dict[int, Tensor]],
    fused: bool,
    task: TaskInputs | None = None,
) -> tuple[GradPass, list[dict[int, Tensor]], Tensor]:
    """One batch's forward graph (with every kind's partner rows), z' - z of its own rows per
    kind, and the metric's weights, zero on the partner rows (they only lend their z)."""
    paired = [sources[a] for a in ablations if ablation_kind(a).takes_partner_rows]
    run_rows = run_rows_of(rows, paired)
    m = metric(run_rows)
    weight = torch.zeros_like(m.weight)
    weight[: len(rows)] = m.weight[: len(rows)]
    gp = grad_pass(model, tokens[run_rows.to(tokens.device)], ro, m, run_rows, fused)
    dzs = [z_changes(gp, a, rows, run_rows, sources[a], z_means[a], task) for a in ablations]
    return gp, dzs, weight


def run_rows_of(rows: Tensor, sources: Sequence[Tensor]) -> Tensor:
    """`rows`, then (sorted) the rows outside them that one of them takes its z from under
    any of these partner maps (one map: engine.ablation.with_partners)."""
    if len(sources) == 1:
        return with_partners(rows, sources[0])
    lent = {int(r) for source in sources for r in source[rows]}
    extra = sorted(lent - set(rows.tolist()))
    return torch.cat([rows, torch.tensor(extra, dtype=torch.long)])


def z_changes(
    gp: GradPass,
    ablation: str,
    rows: Tensor,
    run_rows: Tensor,
    source: Tensor | None,
    z_mean: dict[int, Tensor],
    task: TaskInputs | None = None,
) -> dict[int, Float[Tensor, "batch pos head d_head"]]:
    """z' - z of every head of every layer for the batch's own rows (engine.ablation's
    ablated_z: the partner's z, found among run_rows, the kind's table or 0)."""
    device = next(iter(gp.z.values())).device
    partner = _row_index(ablation_kind(ablation), run_rows, rows, source, task, device)
    dz = {}
    for layer, z in gp.z.items():
        z = z.detach()
        dz[layer] = ablated_z(ablation, z, len(rows), partner, z_mean.get(layer)) - z[: len(rows)]
    return dz
