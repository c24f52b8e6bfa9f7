"""Slow, obvious references of the method comparison (engine.methods, engine.methods_grad).

- `reference_energies`: per candidate, full forward passes of TransformerLens with hooks
  (reference.tasks: one per ablated set), CoAx's Fisher energy as the clean distribution's
  variance of the change of logits, sum p d^2 - (sum p d)^2, in numpy float64.
- `hf_gradient_methods`: Hugging Face `transformers`' own model, autograd on its forward pass,
  z at the input of each attention output projection (reference.atp.hf_layers); zero ablation
  is that input equal to reference.atp.value_offset (TransformerLens' zero of its folded z),
  zero-with-value-bias that input 0 (CoAx's).
  The conditional gradient, plain AtP and EAP-IG at a given step count, per answer token, one
  backward pass per token. Shares no code with the engine.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING

import numpy as np
import torch
from jaxtyping import Bool, Int
from torch import Tensor

from selfrepair.reference.atp import hf_layers, value_offset
from selfrepair.reference.heads import patch_z

if TYPE_CHECKING:
    from selfrepair.reference.tasks import TaskReference

__all__ = ["hf_gradient_methods", "reference_energies"]


def _energy(ref_logits: np.ndarray, ablated: np.ndarray, clean: np.ndarray) -> np.ndarray:
    p = np.exp(clean - clean.max(-1, keepdims=True))
    p /= p.sum(-1, keepdims=True)
    d = ref_logits - ablated
    return (p * d * d).sum(-1) - (p * d).sum(-1) ** 2


@torch.no_grad()
def _logits(ref: TaskReference, heads, ablation: str, bos: bool) -> np.ndarray:
    patches = [patch_z(la, h, ref.ablated_z(la, h, ablation, bos)) for la, h in heads]
    with ref.model.hooks(fwd_hooks=patches):
        return ref.model(ref.tokens)[:, :-1].double().cpu().numpy()


def _metric(logits: np.ndarray, tokens: np.ndarray, counter: np.ndarray | None) -> np.ndarray:
    target = np.take_along_axis(logits, tokens[:, 1:, None], -1)[..., 0]
    if counter is None:
        return target - logits.mean(-1)
    return target - np.take_along_axis(logits, counter[..., None], -1)[..., 0]


def reference_energies(
    ref: TaskReference,
    ablation: str,
    members: Iterable[Sequence[int]],
    candidates: Iterable[Sequence[int]],
    mean_include_bos: bool = True,
) -> dict[tuple[int, int], dict[str, np.ndarray]]:
    """Per candidate u [rows, pos], float64: single_energy, conditional_energy (CoAx's energy
    of u's ablation in the intact model, and from S ablated to S and u ablated, both in the
    clean distribution's metric) and the two metric drops single_logit_diff and
    conditional_logit_diff.

    Args:
        ref: the task's rows and clean runs (reference.tasks.TaskReference).
        ablation: as reference.tasks.reference_task_heads.
        members: the set's (layer, head) pairs.
        candidates: the heads scored.
        mean_include_bos: whether the mean z includes position 0.
    """
    base = [(int(la), int(h)) for la, h in members]
    tokens = ref.tokens.cpu().numpy()
    counter = None if ref.counter is None else ref.counter.cpu().numpy()
    clean = _logits(ref, [], ablation, mean_include_bos)
    with_set = _logits(ref, base, ablation, mean_include_bos)
    out = {}
    for la, h in candidates:
        u = (int(la), int(h))
        alone = _logits(ref, [u], ablation, mean_include_bos)
        both = _logits(ref, [*base, u], ablation, mean_include_bos)
        out[u] = {
            "single_energy": _energy(clean, alone, clean),
            "conditional_energy": _energy(with_set, both, clean),
            "single_logit_diff": _metric(clean, tokens, counter) - _metric(alone, tokens, counter),
            "conditional_logit_diff": _metric(with_set, tokens, counter)
            - _metric(both, tokens, counter),
        }
    return out


def _hf_run(hf_model, tokens, replace: dict[int, object]):
    """Hugging Face forward with each layer's attention-output-projection input kept, and
    replaced by replace[layer](x) where given; (logits, inputs by layer)."""
    blocks, attn_out, _, _ = hf_layers(hf_model)
    zs: dict[int, Tensor] = {}
    handles = []
    for layer, blk in enumerate(blocks):

        def hook(module, args, layer=layer):
            x = replace[layer](args[0]) if layer in replace else args[0]
            zs[layer] = x
            return (x, *args[1:])

        handles.append(attn_out(blk).register_forward_pre_hook(hook))
    try:
        return hf_model(tokens).logits, zs
    finally:
        for handle in handles:
            handle.remove()


def hf_gradient_methods(
    hf_model,
    tokens: Int[Tensor, "batch pos_plus_1"],
    counter: Int[Tensor, "batch pos"] | None,
    scored: Bool[Tensor, "batch pos"],
    members: Iterable[Sequence[int]],
    steps: int,
    ablation: str = "zero",
) -> dict[str, np.ndarray]:
    """Zero ablation: conditional_gradient, atp and eap_ig, each [layer, head, token] (answer
    tokens in row-major order), signed, float64 (engine.methods_grad's definitions).

    Args:
        hf_model: a transformers GPT-2, GPT-NeoX or Llama causal LM.
        tokens: [batch, pos + 1] token rows.
        counter: [batch, pos] counterfactual tokens (metric: answer minus counterfactual), or
            None (the answer's logit centred over the vocabulary).
        scored: bool [batch, pos], the answer positions.
        members: the set ablated for the conditional gradient.
        steps: EAP-IG's steps.
        ablation: "zero" (the input equal to value_offset, TransformerLens' zero) or
            "zero-with-value-bias" (the input itself 0: CoAx's zero).
    """
    blocks, _, _, n_heads = hf_layers(hf_model)
    n_layers = len(blocks)
    offsets = [value_offset(hf_model, blk).detach() for blk in blocks]
    if ablation == "zero-with-value-bias":
        offsets = [torch.zeros_like(offset) for offset in offsets]
    members = [(int(la), int(h)) for la, h in members]
    answers = [(int(b), int(t)) for b, t in zip(*np.nonzero(np.asarray(scored)), strict=True)]

    def metric(logits, b, t):
        row = logits[b, t].double()
        if counter is None:
            return row[tokens[b, t + 1]] - row.mean()
        return row[tokens[b, t + 1]] - row[counter[b, t]]

    def heads(x, b):  # [pos, heads, d_head] of row b
        return x[b].unflatten(-1, (n_heads, -1)).double()

    def zero_members(layer):
        def replace(x):
            x = x.clone().unflatten(-1, (n_heads, -1))
            for la, h in members:
                if la == layer:
                    x[:, :, h] = offsets[layer].view(n_heads, -1)[h]
            return x.flatten(-2)

        return replace

    out = {k: np.zeros((n_layers, n_heads, len(answers))) for k in ("conditional_gradient", "atp")}
    with torch.enable_grad():
        for name, replace in (
            ("conditional_gradient", {la: zero_members(la) for la, _ in members}),
            ("atp", {}),
        ):
            logits, zs = _hf_run(hf_model, tokens, replace)
            z = [zs[la] for la in range(n_layers)]
            for i, (b, t) in enumerate(answers):
                grads = torch.autograd.grad(metric(logits, b, t), z, retain_graph=True)
                for la in range(n_layers):
                    dz = offsets[la].view(n_heads, -1).double() - heads(z[la].detach(), b)
                    out[name][la, :, i] = (heads(grads[la], b) * dz).sum((0, 2)).cpu().numpy()
            for la, h in members if name == "conditional_gradient" else []:
                out[name][la, h] = 0.0
        out["eap_ig"] = _hf_eap_ig(hf_model, tokens, answers, metric, heads, offsets, steps)
    return out


def _hf_eap_ig(hf_model, tokens, answers, metric, heads, offsets, steps) -> np.ndarray:
    with torch.no_grad():
        _, clean = _hf_run(hf_model, tokens, {})
    n_layers, n_heads = len(offsets), heads(clean[0], 0).shape[1]
    out = np.zeros((n_layers, n_heads, len(answers)))
    for la in range(n_layers):
        base = offsets[la].expand_as(clean[la])
        grads = [0.0] * len(answers)
        for step in range(1, steps + 1):
            point = (base + step / steps * (clean[la] - base)).detach().requires_grad_(True)
            logits, _ = _hf_run(hf_model, tokens, {la: lambda x, point=point: point})
            for i, (b, t) in enumerate(answers):
                (g,) = torch.autograd.grad(metric(logits, b, t), point, retain_graph=True)
                grads[i] = grads[i] + g
        for i, (b, _) in enumerate(answers):
            delta = heads(base, b) - heads(clean[la], b)
            out[la, :, i] = (heads(grads[i] / steps, b) * delta).sum((0, 2)).cpu().numpy()
    return out
