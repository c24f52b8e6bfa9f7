"""The clean forward pass attribution patching differentiates (engine.atp), with a gate on every
layer's residual contribution that a backward pass can drop (AtP*'s GradDrop).

`grad_pass` runs the blocks the engine's clean pass runs (models.blocks.run_block), keeping each
layer's z in an autograd graph and passing each attention and MLP output through `_Gate`: the
identity forward, and backward the identity unless its layer is the one `DropSwitch.dropped`
names, whose gradient becomes None (zero; autograd then skips what only that path needed). One
forward graph so serves the AtP backward pass and every GradDrop pass.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from functools import partial
from typing import TYPE_CHECKING

import torch
from jaxtyping import Bool, Float, Int
from torch import Tensor

from selfrepair.engine.metric import Metric
from selfrepair.models.blocks import run_block
from selfrepair.models.forward import check_finite, embed
from selfrepair.models.readout import Readout

if TYPE_CHECKING:
    from transformer_lens import HookedTransformer

__all__ = [
    "DropSwitch",
    "GradPass",
    "frozen_parameters",
    "grad_pass",
    "graddrop_estimates",
    "head_estimates",
    "head_unit_estimates",
    "token_estimates",
    "token_groups",
]


class DropSwitch:
    """Which layer's residual contribution the next backward pass drops (None: none)."""

    def __init__(self) -> None:
        self.dropped: int | None = None


class _Gate(torch.autograd.Function):
    """Identity forward; backward passes the gradient on unless its layer is dropped."""

    @staticmethod
    def forward(ctx, x: Tensor, switch: DropSwitch, layer: int) -> Tensor:
        ctx.switch, ctx.layer = switch, layer
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad: Tensor):
        return (None if ctx.switch.dropped == ctx.layer else grad), None, None


@contextlib.contextmanager
def frozen_parameters(model: HookedTransformer) -> Iterator[None]:
    """No parameter requires grad inside (the passes need activation gradients only); restored
    after."""
    params = [p for p in model.parameters() if p.requires_grad]
    for p in params:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p in params:
            p.requires_grad_(True)


@dataclass
class GradPass:
    """A clean forward pass that keeps its graph: m[b, t], every layer's z in the graph and the
    switch of its gates."""

    m: Float[Tensor, "batch pos"]
    z: dict[int, Float[Tensor, "batch pos head d_head"]]
    switch: DropSwitch

    def grads(self, grad_out: Tensor, layers: list[int]) -> dict[int, Tensor]:
        """d(sum grad_out * m)/dz of `layers`, the graph kept for the next call."""
        got = torch.autograd.grad(
            self.m, [self.z[layer] for layer in layers], grad_out, retain_graph=True
        )
        return dict(zip(layers, got, strict=True))


def grad_pass(
    model: HookedTransformer,
    tokens: Int[Tensor, "batch pos_plus_1"],
    ro: Readout,
    metric: Metric,
    rows: Tensor,
    fused: bool = True,
) -> GradPass:
    """The clean run of tokens[:, :-1] through the same blocks as the engine's clean pass
    (models.blocks.run_block), with every z and every layer's attention and MLP output (gated,
    for GradDrop) in an autograd graph; call inside frozen_parameters and enable_grad."""
    switch = DropSwitch()
    z: dict[int, Tensor] = {}

    def keep_z(x, hook, layer):
        z[layer] = x

    def gate(x, hook, layer):
        return _Gate.apply(x, switch, layer)

    hooks = []
    for layer in range(model.cfg.n_layers):
        prefix = f"blocks.{layer}"
        hooks.append((f"{prefix}.attn.hook_z", partial(keep_z, layer=layer)))
        hooks.append((f"{prefix}.hook_attn_out", partial(gate, layer=layer)))
        if not model.cfg.attn_only:
            hooks.append((f"{prefix}.hook_mlp_out", partial(gate, layer=layer)))
    with model.hooks(fwd_hooks=hooks):
        # The stream requires grad so that every z is in the graph; the embedding gets none.
        resid = embed(model, tokens[:, :-1]).detach().requires_grad_(True)
        for layer, block in enumerate(model.blocks):
            resid = run_block(block, resid, fused)
            check_finite(resid.detach(), f"the residual stream after layer {layer}", rows)
    return GradPass(m=metric.per_position(ro, resid), z=z, switch=switch)


def head_estimates(
    grads: dict[int, Tensor], dz: dict[int, Tensor], n_layers: int, n_heads: int
) -> Float[Tensor, "layer head batch"]:
    """sum over positions and d_head of grad . (z' - z) per head and row (the batch's own rows:
    dz's); 0 for layers without a gradient."""
    n = next(iter(dz.values())).shape[0]
    out = torch.zeros(n_layers, n_heads, n, device=next(iter(dz.values())).device)
    for layer, g in grads.items():
        out[layer] = torch.einsum("bphd,bphd->hb", g[:n].float(), dz[layer].float())
    return out


def graddrop_estimates(
    gp: GradPass, grad_out: Tensor, dz: dict[int, Tensor], atp: Tensor
) -> Float[Tensor, "drop_layer layer head batch"]:
    """estimate_l for every dropped layer l: AtP above l, 0 in l, a backward pass below l."""
    n_layers, n_heads = atp.shape[:2]
    out = atp.unsqueeze(0).repeat(n_layers, 1, 1, 1)
    for dropped in range(n_layers):
        out[dropped, dropped] = 0.0
        if dropped == 0:
            continue
        gp.switch.dropped = dropped
        try:
            grads = gp.grads(grad_out, list(range(dropped)))
        finally:
            gp.switch.dropped = None
        out[dropped, :dropped] = head_estimates(grads, dz, n_layers, n_heads)[:dropped]
    return out


def _head_unit(
    gp: GradPass, weight: Tensor, layer: int, head: int, delta: Tensor, dropped: int | None = None
) -> Float[Tensor, " batch"]:
    """One backward pass of the weighted metric down to `layer`, contracted with the head's
    z' - z (`delta`, [n, pos, d_head]) per row; `dropped`: GradDrop's dropped layer."""
    gp.switch.dropped = dropped
    try:
        g = gp.grads(weight, [layer])[layer][: delta.shape[0], :, head].float()
    finally:
        gp.switch.dropped = None
    return torch.einsum("bpd,bpd->b", g, delta)


def head_unit_estimates(
    gp: GradPass, dz: dict[int, Tensor], top: Bool[Tensor, "layer head batch pos"], graddrop: bool
) -> tuple[Float[Tensor, "layer head batch"], Tensor | None]:
    """Per head, per row, the estimate of the change of the head's metric summed over its own
    tokens (`top`, of the batch's own rows): one backward pass per head that has some in the
    batch, down to its layer only; with GradDrop, one more per layer above it (below or at its
    layer: AtP, 0). Heads without tokens in the batch get 0 (no unit)."""
    n_layers, n_heads, n = top.shape[:3]
    atp = torch.zeros(n_layers, n_heads, n, device=top.device)
    drop = atp.unsqueeze(0).repeat(n_layers, 1, 1, 1) if graddrop else None
    for layer, head in top.flatten(2).any(-1).nonzero().tolist():
        weight = torch.zeros_like(gp.m)
        weight[:n] = top[layer, head].to(weight.dtype)
        delta = dz[layer][:, :, head].float()
        atp[layer, head] = _head_unit(gp, weight, layer, head, delta)
        if drop is not None:
            drop[:, layer, head] = atp[layer, head]  # dropping a layer at or below: unchanged
            drop[layer, layer, head] = 0.0
            for dropped in range(layer + 1, n_layers):
                drop[dropped, layer, head] = _head_unit(gp, weight, layer, head, delta, dropped)
    return atp, drop


def token_groups(selected: Bool[Tensor, "batch pos"]) -> Int[Tensor, "batch k"]:
    """Column k: the k-th selected position of each row (-1 where the row has fewer); the
    backward passes of a per-token estimate, one per column."""
    counts = selected.sum(1)
    k = int(counts.max()) if selected.numel() else 0
    groups = torch.full((selected.shape[0], k), -1, dtype=torch.long, device=selected.device)
    rank = selected.long().cumsum(1) - 1
    b, p = selected.nonzero(as_tuple=True)
    groups[b, rank[b, p]] = p
    return groups


def token_estimates(
    gp: GradPass, dz: dict[int, Tensor], selected: Bool[Tensor, "batch pos"], graddrop: bool
) -> tuple[Float[Tensor, "layer head batch pos"], Tensor | None, int]:
    """Per-token estimates of every head on the `selected` positions of the batch's own rows
    (NaN elsewhere), one backward pass (L more with GradDrop) per token_groups column; and the
    backward passes run."""
    n_layers, n_heads = len(gp.z), gp.z[0].shape[2]
    layers = list(range(n_layers))
    nan = float("nan")
    atp = torch.full((n_layers, n_heads, *selected.shape), nan, device=selected.device)
    drop = atp.new_full((n_layers, *atp.shape), nan) if graddrop else None
    passes = 0
    for column in token_groups(selected).T:
        rows = (column >= 0).nonzero().flatten()
        one_hot = torch.zeros_like(gp.m)
        one_hot[rows, column[rows]] = 1.0
        est = head_estimates(gp.grads(one_hot, layers), dz, n_layers, n_heads)
        atp[:, :, rows, column[rows]] = est[:, :, rows]
        passes += 1
        if drop is not None:
            drop[..., rows, column[rows]] = graddrop_estimates(gp, one_hot, dz, est)[..., rows]
            passes += n_layers - 1
    return atp, drop, passes
