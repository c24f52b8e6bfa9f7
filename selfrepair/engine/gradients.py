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
from jaxtyping import Float, Int
from torch import Tensor

from selfrepair.engine.metric import Metric
from selfrepair.models.blocks import run_block
from selfrepair.models.forward import check_finite, embed
from selfrepair.models.readout import Readout

if TYPE_CHECKING:
    from transformer_lens import HookedTransformer

__all__ = ["DropSwitch", "GradPass", "frozen_parameters", "grad_pass"]


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
