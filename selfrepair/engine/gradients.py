"""The clean forward pass attribution patching differentiates (engine.atp), and AtP*'s GradDrop
passes started from the AtP pass's residual gradients.

`grad_pass` runs the blocks the engine's clean pass runs (models.blocks.run_block), keeping each
layer's z and each block's input residual in an autograd graph. GradDrop drops the gradient
through layer d's attention and MLP outputs: above d nothing changes, and through block d only
the residual path is left, so the dropped pass's gradient at block d's input is the AtP pass's
gradient at block d's output, exactly (the same tensor: no other term is added to it). A
GradDrop pass therefore starts at block d's input with that gradient and runs only the blocks
below d (`GradPass.dropped_grads`): the numbers of a full pass with the layer's outputs cut
(tests/test_atp.py checks them bitwise), at about half the backward work, since the blocks
above d are not run again per dropped layer.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
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
    "GradPass",
    "frozen_parameters",
    "grad_pass",
    "graddrop_estimates",
    "head_estimates",
    "head_unit_estimates",
    "token_estimates",
    "token_groups",
]


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
    """A clean forward pass that keeps its graph: m[b, t], every layer's z and every block's
    input residual (resid[l]; resid[L]: the final one) in the graph."""

    m: Float[Tensor, "batch pos"]
    z: dict[int, Float[Tensor, "batch pos head d_head"]]
    resid: list[Float[Tensor, "batch pos d_model"]]

    def grads(
        self, grad_out: Tensor, layers: list[int], after: Sequence[int] = ()
    ) -> tuple[dict[int, Tensor], dict[int, Tensor]]:
        """d(sum grad_out * m)/dz of `layers`, and /d(block d's output) for d in `after` (the
        GradDrop passes' starting gradients), the graph kept for the next call."""
        inputs = [self.z[layer] for layer in layers] + [self.resid[d + 1] for d in after]
        got = torch.autograd.grad(self.m, inputs, grad_out, retain_graph=True)
        n = len(layers)
        return dict(zip(layers, got[:n], strict=True)), dict(zip(after, got[n:], strict=True))

    def dropped_grads(self, dropped: int, output_grad: Tensor, layers: list[int]):
        """GradDrop's d/dz of `layers` (below `dropped`) with the gradient through layer
        `dropped`'s attention and MLP outputs dropped: from block `dropped`'s input, given
        `output_grad`, the AtP pass's gradient at the block's output."""
        got = torch.autograd.grad(
            self.resid[dropped], [self.z[layer] for layer in layers], output_grad, retain_graph=True
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
    (models.blocks.run_block), with every z and every block's input residual in an autograd
    graph; call inside frozen_parameters and enable_grad."""
    z: dict[int, Tensor] = {}

    def keep_z(x, hook, layer):
        z[layer] = x

    hooks = [
        (f"blocks.{layer}.attn.hook_z", partial(keep_z, layer=layer))
        for layer in range(model.cfg.n_layers)
    ]
    with model.hooks(fwd_hooks=hooks):
        # The stream requires grad so that every z is in the graph; the embedding gets none.
        resid = [embed(model, tokens[:, :-1]).detach().requires_grad_(True)]
        for layer, block in enumerate(model.blocks):
            resid.append(run_block(block, resid[-1], fused))
            check_finite(resid[-1].detach(), f"the residual stream after layer {layer}", rows)
    return GradPass(m=metric.per_position(ro, resid[-1]), z=z, resid=resid)


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
    gp: GradPass,
    output_grads: dict[int, Tensor],
    dzs: Sequence[dict[int, Tensor]],
    atps: Sequence[Tensor],
) -> list[Float[Tensor, "drop_layer layer head batch"]]:
    """estimate_l for every dropped layer l, per kind (`dzs`, with its AtP `atps`): AtP above l,
    0 in l, below l a backward pass from block l's input (`output_grads`: the AtP pass's
    gradients at the outputs of blocks 1 .. L - 1), run once for every kind."""
    n_layers, n_heads = atps[0].shape[:2]
    outs = [atp.unsqueeze(0).repeat(n_layers, 1, 1, 1) for atp in atps]
    for dropped in range(n_layers):
        for out in outs:
            out[dropped, dropped] = 0.0
        if dropped == 0:
            continue
        grads = gp.dropped_grads(dropped, output_grads[dropped], list(range(dropped)))
        for out, dz in zip(outs, dzs, strict=True):
            out[dropped, :dropped] = head_estimates(grads, dz, n_layers, n_heads)[:dropped]
    return outs


def _head_contraction(g: Tensor, head: int, delta: Tensor) -> Float[Tensor, " batch"]:
    """A layer's gradient contracted with one head's z' - z (`delta`, [n, pos, d_head]) per
    row."""
    return torch.einsum("bpd,bpd->b", g[: delta.shape[0], :, head].float(), delta)


def head_unit_estimates(
    gp: GradPass,
    dzs: Sequence[dict[int, Tensor]],
    top: Bool[Tensor, "layer head batch pos"],
    graddrop: bool,
) -> list[tuple[Float[Tensor, "layer head batch"], Tensor | None]]:
    """Per kind (`dzs`), per head, per row, the estimate of the change of the head's metric
    summed over its own tokens (`top`, of the batch's own rows): one backward pass per head that
    has some in the batch, down to its layer only, shared by every kind; with GradDrop, one more
    per layer d above it, from block d's input down to the head's layer (below or at its layer:
    AtP, 0). Heads without tokens in the batch get 0 (no unit)."""
    n_layers, n_heads, n = top.shape[:3]
    atps = [torch.zeros(n_layers, n_heads, n, device=top.device) for _ in dzs]
    drops = [atp.unsqueeze(0).repeat(n_layers, 1, 1, 1) if graddrop else None for atp in atps]
    for layer, head in top.flatten(2).any(-1).nonzero().tolist():
        weight = torch.zeros_like(gp.m)
        weight[:n] = top[layer, head].to(weight.dtype)
        deltas = [dz[layer][:, :, head].float() for dz in dzs]
        above = list(range(layer + 1, n_layers)) if graddrop else []
        grads, output_grads = gp.grads(weight, [layer], above)
        for atp, drop, delta in zip(atps, drops, deltas, strict=True):
            atp[layer, head] = _head_contraction(grads[layer], head, delta)
            if drop is not None:
                drop[:, layer, head] = atp[layer, head]  # dropping a layer at or below: unchanged
                drop[layer, layer, head] = 0.0
        for dropped in above:
            g = gp.dropped_grads(dropped, output_grads[dropped], [layer])[layer]
            for drop, delta in zip(drops, deltas, strict=True):
                drop[dropped, layer, head] = _head_contraction(g, head, delta)
    return list(zip(atps, drops, strict=True))


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
    gp: GradPass,
    dzs: Sequence[dict[int, Tensor]],
    selected: Bool[Tensor, "batch pos"],
    graddrop: bool,
) -> tuple[list[tuple[Float[Tensor, "layer head batch pos"], Tensor | None]], int]:
    """Per kind (`dzs`), per-token estimates of every head on the `selected` positions of the
    batch's own rows (NaN elsewhere), one backward pass (L more with GradDrop) per token_groups
    column, shared by every kind; and the backward passes run."""
    n_layers, n_heads = len(gp.z), gp.z[0].shape[2]
    layers = list(range(n_layers))
    above = list(range(1, n_layers)) if graddrop else []
    nan = float("nan")
    shape = (n_layers, n_heads, *selected.shape)
    atps = [torch.full(shape, nan, device=selected.device) for _ in dzs]
    drops = [atp.new_full((n_layers, *shape), nan) if graddrop else None for atp in atps]
    passes = 0
    for column in token_groups(selected).T:
        rows = (column >= 0).nonzero().flatten()
        one_hot = torch.zeros_like(gp.m)
        one_hot[rows, column[rows]] = 1.0
        grads, output_grads = gp.grads(one_hot, layers, above)
        ests = [head_estimates(grads, dz, n_layers, n_heads) for dz in dzs]
        for atp, est in zip(atps, ests, strict=True):
            atp[:, :, rows, column[rows]] = est[:, :, rows]
        passes += 1
        if graddrop:
            dropped = graddrop_estimates(gp, output_grads, dzs, ests)
            for drop, est in zip(drops, dropped, strict=True):
                drop[..., rows, column[rows]] = est[..., rows]
            passes += n_layers - 1
    return list(zip(atps, drops, strict=True)), passes
