"""The gradient methods CoAx compares, per candidate head and answer token, on TransformerLens'
own forward pass with autograd (Gong 2026, release 2.1.0, src/curvgraph/baselines.py):

- conditional gradient (`conditional_attribution_patching`): attribution patching in the graph
  with the set S ablated, sum over positions of dM/dz . (z' - z) for each head (z' its ablated
  z; 0 under zero ablation, where CoAx's z . dM/dz is the same up to sign), S's own heads 0;
  the score is the mean over answers of its magnitude (CoAx takes |.| per example).
- activation-space EAP-IG (`integrated_gradient_attribution`): for each layer, its heads' z
  moved from z' to the clean z in k steps (alpha = 1/k ... 1, the layers below clean, those
  above recomputed), attr = (z' - z) . mean of the k gradients, per head; the score is the
  magnitude of the mean over answers (CoAx: |signed dataset mean|), k = `steps` (CoAx: 5).

M is the task's metric at one answer token (engine.methods.task_metric): a row's answers are
taken one backward pass at a time, all rows together (rows do not interact). The signed
per-token values are returned; analysis.methods takes the magnitudes where CoAx does.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING

import numpy as np
import torch
import xarray as xr
from jaxtyping import Bool, Float, Int
from torch import Tensor

from selfrepair.engine.ablation import AblationChunk, check_ablation
from selfrepair.engine.inputs import TaskInputs, normalize_heads, validate_tokens
from selfrepair.engine.methods import (
    clean_residuals,
    logits_at,
    task_chunks,
    task_metric,
    token_index,
    unembedding,
)

if TYPE_CHECKING:
    from transformer_lens import HookedTransformer

__all__ = ["answer_groups", "conditional_gradient", "eap_ig", "measure_gradient_methods"]


def answer_groups(scored: Bool[Tensor, "batch pos"]) -> list[tuple[Tensor, Tensor, Tensor]]:
    """The answer tokens in groups with at most one per row (the j-th answer of each row), as
    (rows, positions, their indices in token_index's order): one backward pass per group."""
    rows, pos = token_index(scored)
    rank = torch.zeros_like(rows)
    for i in range(1, len(rows)):
        rank[i] = rank[i - 1] + 1 if rows[i] == rows[i - 1] else 0
    return [
        (rows[rank == j], pos[rank == j], torch.nonzero(rank == j)[:, 0])
        for j in range(int(rank.max()) + 1 if len(rank) else 0)
    ]


def _metric(model, tokens, final, rows, pos, counter, unembed) -> Tensor:
    """The summed metric of one group's answers from the final residual stream."""
    target = tokens[:, 1:][rows, pos]
    cf = None if counter is None else counter[rows, pos]
    return task_metric(logits_at(model, final, (rows, pos), unembed), target, cf)


def _contract(grad: Tensor, delta: Tensor, rows: Tensor) -> Float[Tensor, "head group"]:
    """sum over positions and d_head of grad . delta, per head, for the group's rows."""
    return torch.einsum("bphd,bphd->hb", grad[rows].double(), delta[rows].double())


def conditional_gradient(
    model: HookedTransformer,
    tokens: Int[Tensor, "batch pos_plus_1"],
    chunk: AblationChunk,
    members: dict[int, list[int]],
    scored: Bool[Tensor, "batch pos"],
    counter: Tensor | None,
    unembed: Tensor | None = None,
) -> Float[Tensor, "layer head token"]:
    """Signed AtP estimate of every head per answer token in the graph with `members`
    ({layer: heads}; empty: plain AtP) replaced by their ablated z; members' estimates 0.
    unembed: engine.methods.unembedding(model), else built per answer group."""
    n_layers = model.cfg.n_layers
    zs: dict[int, Tensor] = {}

    def embed(x, hook):  # the graph starts here: gradients reach every z, parameters frozen
        return x.detach().requires_grad_(True)

    def keep(z, hook):
        layer = hook.layer()
        if layer in members:
            z = z.clone()
            z[:, :, members[layer]] = chunk.z_new(layer, members[layer]).to(z.dtype)
        zs[layer] = z
        return z

    hooks = [("hook_embed", embed)] + [(f"blocks.{la}.attn.hook_z", keep) for la in range(n_layers)]
    with torch.enable_grad(), model.hooks(fwd_hooks=hooks):
        final = model(tokens[:, :-1], stop_at_layer=n_layers)
        z = [zs[la] for la in range(n_layers)]
        delta = [chunk.z_new(la).to(x.dtype) - x.detach() for la, x in enumerate(z)]
        groups = answer_groups(scored)
        out = torch.zeros(n_layers, model.cfg.n_heads, int(scored.sum()), dtype=torch.float64)
        for rows, pos, where in groups:
            m = _metric(model, tokens, final, rows, pos, counter, unembed).sum()
            grads = torch.autograd.grad(
                m, z, retain_graph=True, allow_unused=True, materialize_grads=True
            )
            for la in range(n_layers):
                out[la, :, where] = _contract(grads[la], delta[la], rows).cpu()
    for la, hs in members.items():
        out[la, hs] = 0.0
    return out


def eap_ig(
    model: HookedTransformer,
    tokens: Int[Tensor, "batch pos_plus_1"],
    chunk: AblationChunk,
    scored: Bool[Tensor, "batch pos"],
    counter: Tensor | None,
    steps: int,
    unembed: Tensor | None = None,
) -> Float[Tensor, "layer head token"]:
    """Signed activation-space EAP-IG of every head per answer token (module docstring);
    unembed as conditional_gradient's."""
    if steps < 1:
        raise ValueError(f"steps={steps}: EAP-IG needs at least one step")
    n_layers = model.cfg.n_layers
    groups = answer_groups(scored)
    out = torch.zeros(n_layers, model.cfg.n_heads, int(scored.sum()), dtype=torch.float64)
    resid = clean_residuals(model, tokens)  # the layers below are clean: restart there
    for layer in range(n_layers):
        clean, base = chunk.cp.z[layer], chunk.z_new(layer).to(chunk.cp.z[layer].dtype)
        total = [torch.zeros(clean.shape, dtype=torch.float64, device=clean.device) for _ in groups]
        for step in range(1, steps + 1):
            point = (base + step / steps * (clean - base)).detach().requires_grad_(True)
            with (
                torch.enable_grad(),
                model.hooks(
                    fwd_hooks=[(f"blocks.{layer}.attn.hook_z", lambda z, hook, point=point: point)]
                ),
            ):
                final = model(resid[layer], start_at_layer=layer, stop_at_layer=n_layers)
                for g, (rows, pos, _) in enumerate(groups):
                    m = _metric(model, tokens, final, rows, pos, counter, unembed).sum()
                    (grad,) = torch.autograd.grad(m, point, retain_graph=True)
                    total[g] += grad.double()
        for g, (rows, _, where) in enumerate(groups):
            out[layer, :, where] = _contract(total[g] / steps, base - clean, rows).cpu()
    return out


def measure_gradient_methods(
    model: HookedTransformer,
    tokens: Int[Tensor, "batch pos_plus_1"],
    ablation: str,
    members: Iterable[Sequence[int]],
    scored: Bool[Tensor, "batch pos"],
    *,
    steps: int,
    batch_size: int | None = None,
    mean_include_bos: bool = True,
    task: TaskInputs | None = None,
) -> xr.Dataset:
    """Per head (layer, head) and answer token, the signed conditional gradient (set `members`
    ablated), plain AtP (nothing ablated) and EAP-IG at `steps` steps (module docstring).

    Args:
        model: the HookedTransformer (its parameters are not changed; no gradient reaches them).
        tokens: [batch, pos + 1] token rows, each starting with BOS.
        ablation: a kind of selfrepair.ablations.KINDS: z' of every head (engine.ablation).
        members: the set S, (layer, head) pairs.
        scored: bool [batch, pos], the answer positions.
        steps: EAP-IG's number of steps k.
        batch_size, mean_include_bos, task: as engine.methods.measure_methods.

    Returns:
        conditional_gradient, atp, eap_ig (layer, head, token; coordinates prompt, position).
    """
    check_ablation(ablation)
    validate_tokens(model, tokens, task)
    by_layer = normalize_heads(model, members)
    scored = torch.as_tensor(np.asarray(scored), dtype=torch.bool)
    tokens, counter, chunks = task_chunks(
        model, tokens, ablation, batch_size or tokens.shape[0], mean_include_bos, task
    )
    device = tokens.device
    parts: dict[str, list[Tensor]] = {"conditional_gradient": [], "atp": [], "eap_ig": []}
    w = unembedding(model)
    for chunk in chunks:
        sl = chunk.span
        args = (model, tokens[sl], chunk)
        cf = None if counter is None else counter[sl]
        mask = scored[sl].to(device)
        parts["conditional_gradient"].append(conditional_gradient(*args, by_layer, mask, cf, w))
        parts["atp"].append(conditional_gradient(*args, {}, mask, cf, w))
        parts["eap_ig"].append(eap_ig(*args, mask, cf, steps, w))
    rows, pos = token_index(scored)
    dims = ("layer", "head", "token")
    data = {k: (dims, torch.cat(v, -1).numpy()) for k, v in parts.items()}
    coords = {"prompt": ("token", rows.numpy()), "position": ("token", pos.numpy())}
    members_list = [[la, h] for la, hs in by_layer.items() for h in hs]
    attrs = {
        "ablation": ablation,
        "model": model.cfg.model_name,
        "members": members_list,
        "steps": steps,
    }
    return xr.Dataset(data, coords=coords, attrs=attrs)
