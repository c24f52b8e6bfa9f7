"""The per-layer tables an ablation kind replaces z from (its registry entry's `table`), made once
per measurement and read by every pass through engine.ablation (measure_heads, the sets, the
methods, the mechanisms) and by AtP, so that all of them ablate with the same numbers:
- MEAN: each head's mean z over the rows measured (mean_z);
- VALUE_BIAS: minus each head's value bias, which TransformerLens folds into b_O
  (models.value_bias), so that z' + b_V = 0: the whole slice entering the attention output
  projection is zero, as CoAx's register_head_ablation (src/curvgraph/circuits.py) zeroes it;
- TEMPLATE_MEAN: each head's mean z over a task's corrupted prompts of each template group, per
  position (template_mean_z), with each row's group (row_groups) as the replacement's index.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING

import torch
from jaxtyping import Float, Int
from torch import Tensor

from selfrepair.ablations import MEAN, TEMPLATE_MEAN, VALUE_BIAS, Ablation
from selfrepair.engine.inputs import TaskInputs
from selfrepair.models.blocks import run_block
from selfrepair.models.forward import embed
from selfrepair.models.value_bias import folded_value_bias

if TYPE_CHECKING:
    from transformer_lens import HookedTransformer

__all__ = ["mean_z", "replacement_tables", "row_groups", "template_mean_z", "value_bias_z"]


def mean_z(
    model: HookedTransformer,
    tokens: Int[Tensor, "batch pos_plus_1"],
    layers: Iterable[int],
    batch_size: int,
    include_bos: bool = True,
    fused: bool = True,
    real: Tensor | None = None,
) -> dict[int, Float[Tensor, "head d_head"]]:
    """Mean of each head's z over the positions the measured pass reads: every row's positions
    0 .. pos - 1 of tokens[:, :-1] (the last token is only a target, as in
    models.forward.clean_pass; position 0 optional). With `real` (bool [rows, pos + 1], a task's
    right-padded prompts) over the positions whose next token is real only: not a row's last
    real token (its last answer, a target only), nor the padding, however wide the rows.

    Args:
        model: the HookedTransformer (not modified).
        tokens: [rows, pos + 1] token rows, each starting with BOS.
        layers: layers whose mean z is wanted.
        batch_size: rows per pass.
        include_bos: whether position 0 is averaged over too.
        fused: passed to models.blocks.run_block.
        real: a task's positions that are not padding, or None (every position).
    """
    layers = sorted(set(layers))
    # Position t is averaged over when the pass reads it and its target t + 1 is real.
    weights = torch.ones(tokens.shape[0], tokens.shape[1] - 1, dtype=torch.bool)
    if real is not None:
        weights = real[:, 1:].to(torch.bool).cpu().clone()
    if not include_bos:
        weights[:, 0] = False
    count = int(weights.sum())
    if count == 0:
        raise ValueError(
            "mean ablation has no position to average z over: the rows need a position after "
            "BOS that predicts a real token (or set engine.mean_include_bos: true)"
        )
    sums: dict[int, Tensor] = {}
    batch: list[Tensor] = []

    def add(x, hook, layer):
        w = batch[-1].to(x.device, torch.float32)
        sums[layer] = sums.get(layer, 0) + torch.einsum("bp,bphd->hd", w, x.float())

    hooks = [
        (f"blocks.{layer}.attn.hook_z", lambda x, hook, layer=layer: add(x, hook, layer))
        for layer in layers
    ]
    with torch.no_grad(), model.hooks(fwd_hooks=hooks):
        for start in range(0, tokens.shape[0], batch_size):
            batch.append(weights[start : start + batch_size])
            resid = embed(model, tokens[start : start + batch_size, :-1])
            for block in model.blocks[: layers[-1] + 1]:
                resid = run_block(block, resid, fused)
    return {layer: (s / count).to(model.cfg.dtype) for layer, s in sums.items()}


def value_bias_z(model: HookedTransformer, layers: Iterable[int]) -> dict[int, Tensor]:
    """Minus each head's folded value bias ([head, d_head] per layer): the hook_z that makes the
    slice entering W_O (hook_z + b_V) zero."""
    biases = folded_value_bias(model)
    return {layer: -biases[layer] for layer in sorted(set(layers))}


def _z_of_layers(model, tokens, layers: list[int], fused: bool, add) -> None:
    """Run `tokens` ([rows, pos]) up to the last of `layers`, calling add(z, layer) with each
    layer's hook_z."""
    hooks = [
        (f"blocks.{layer}.attn.hook_z", lambda x, hook, layer=layer: add(x, layer))
        for layer in layers
    ]
    with torch.no_grad(), model.hooks(fwd_hooks=hooks):
        resid = embed(model, tokens)
        for block in model.blocks[: layers[-1] + 1]:
            resid = run_block(block, resid, fused)


def template_mean_z(
    model: HookedTransformer,
    partners: Int[Tensor, "rows pos_plus_1"],
    groups: Int[Tensor, " rows"],
    layers: Iterable[int],
    batch_size: int,
    fused: bool = True,
    real: Tensor | None = None,
) -> dict[int, Float[Tensor, "group pos head d_head"]]:
    """Wang et al.'s mean ablation (ARENA's compute_means_by_template, after Easy-Transformer's
    circuit extraction with mean_by_groups over the ABC dataset): for each group of rows (a
    template) and each position, the mean of each head's z over the group's corrupted prompts,
    at the positions the pass reads (partners[:, :-1]); with `real` over the rows whose token
    there is real only (0 where none is: padding, which no real position reads).

    Args:
        model: the HookedTransformer (not modified).
        partners: [rows, pos + 1] each row's corrupted prompt (engine.inputs.TaskInputs).
        groups: [rows] each row's group, 0 .. G - 1.
        layers: layers whose table is wanted.
        batch_size: rows per pass.
        fused: passed to models.blocks.run_block.
        real: [rows, pos + 1] bool, the positions that are not padding, or None.
    """
    layers = sorted(set(layers))
    n_groups = int(groups.max()) + 1
    device = model.W_U.device
    weights = torch.ones(partners.shape[0], partners.shape[1] - 1, dtype=torch.float32)
    if real is not None:
        weights = real[:, :-1].to(torch.float32).cpu()
    member = torch.nn.functional.one_hot(groups.cpu().long(), n_groups).to(torch.float32)
    sums: dict[int, Tensor] = {}
    batch: list[Tensor] = []

    def add(z, layer):
        m, w = batch[-1]
        sums[layer] = sums.get(layer, 0) + torch.einsum("bg,bp,bphd->gphd", m, w, z.float())

    for start in range(0, partners.shape[0], batch_size):
        rows = slice(start, start + batch_size)
        batch.append((member[rows].to(device), weights[rows].to(device)))
        _z_of_layers(model, partners[rows, :-1].to(device, torch.long), layers, fused, add)
    count = torch.einsum("bg,bp->gp", member, weights).clamp(min=1).to(device)
    return {layer: (s / count[..., None, None]).to(model.cfg.dtype) for layer, s in sums.items()}


def row_groups(kind: Ablation, task: TaskInputs | None, rows: Tensor, device) -> Tensor | None:
    """Each of `rows`' group, the index a TEMPLATE_MEAN kind's replacement takes (a task
    without groups: one group); None for every other kind."""
    if kind.table != TEMPLATE_MEAN:
        return None
    if task is None or task.groups is None:
        return torch.zeros(len(rows), dtype=torch.long, device=device)
    return task.groups[rows.cpu()].to(device, torch.long)


def replacement_tables(
    model: HookedTransformer,
    tokens: Tensor,
    kind: Ablation,
    layers: Iterable[int],
    batch_size: int,
    mean_include_bos: bool,
    fused: bool,
    task: TaskInputs | None,
) -> dict[int, Tensor]:
    """The per-layer table the kind's replacement reads (its `table`; {} for none), over
    `tokens` (MEAN: a task's real positions only) or the task's corrupted prompts
    (TEMPLATE_MEAN); ValueError naming the fix when a task's corrupted prompts are missing."""
    real = None if task is None else task.real
    if kind.table == MEAN:
        return mean_z(model, tokens, layers, batch_size, mean_include_bos, fused, real)
    if kind.table == VALUE_BIAS:
        return value_bias_z(model, layers)
    if kind.table == TEMPLATE_MEAN:
        if task is None or task.partners is None:
            raise ValueError(
                f"{kind.name} ablation needs a task's corrupted prompts (task.partners): run it "
                "on a task with corrupted prompts"
            )
        groups = task.groups
        groups = torch.zeros(tokens.shape[0], dtype=torch.long) if groups is None else groups
        return template_mean_z(model, task.partners, groups, layers, batch_size, fused, real)
    return {}
