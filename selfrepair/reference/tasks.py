"""Slow, obvious reference of the task measurements: per ablated head (or set of heads) one full
forward pass with hooks replacing its z (by the z of its paired corrupted prompt's own clean run,
the mean z over the positions that predict a real token, zero, or the next row's), the metric computed from
the full unembedding (the answer's logit, centred over the vocabulary, or the answer's minus the
counterfactual's), every component's direct effect pushed through the final LayerNorm frozen at
its clean scale and the full unembedding, the LayerNorm part what they leave of the metric's
change. Shares no code with the engine beyond TransformerLens itself."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch
from jaxtyping import Float, Int
from torch import Tensor

from selfrepair.reference.atp import template_mean
from selfrepair.reference.heads import ablated_z as text_ablated_z
from selfrepair.reference.heads import (
    all_heads,
    centred_target_logit,
    frozen_ln_direct_effect,
    head_output,
    head_values,
    patch_z,
    value_bias_of,
)

if TYPE_CHECKING:
    from transformer_lens import HookedTransformer

__all__ = [
    "TaskReference",
    "reference_conditional",
    "reference_task_heads",
    "reference_task_set",
]


@dataclass
class TaskReference:
    """A task's rows and what the reference computes from its clean runs.

    Args:
        model: the HookedTransformer (not modified).
        tokens: [rows, pos + 1] right-padded prompts with their answers.
        counter: [rows, pos] counterfactual tokens (metric logit_diff) or None (correct logit).
        corrupted: [rows, pos + 1] each row's corrupted prompt, or None.
        real: [rows, pos + 1] bool, the positions that are not padding, or None (all).
        groups: [rows] each row's template group (template-mean), or None (one group).
    """

    model: HookedTransformer
    tokens: Int[Tensor, "rows tok"]
    counter: Int[Tensor, "rows pos"] | None = None
    corrupted: Int[Tensor, "rows tok"] | None = None
    real: Tensor | None = None
    groups: Tensor | None = None

    def __post_init__(self) -> None:
        n_pos = self.tokens.shape[1] - 1
        self.keep = slice(0, n_pos)
        with torch.no_grad():
            logits, self.cache = self.model.run_with_cache(self.tokens)
            self.other = None
            if self.corrupted is not None:
                _, self.other = self.model.run_with_cache(self.corrupted)
            self.scale = self.cache["ln_final.hook_scale"][:, self.keep, 0]
            self.metric_clean = self.metric(logits)

    def metric(self, logits: Float[Tensor, "rows tok vocab"]) -> Float[Tensor, "rows pos"]:
        """The metric from full logits: the centred correct-token logit, or its difference."""
        logits = logits[:, self.keep].double()
        value = centred_target_logit(logits, self.tokens[:, 1:])
        if self.counter is None:
            return value
        return value - centred_target_logit(logits, self.counter)

    def de(self, vec: Float[Tensor, "rows tok d_model"]) -> Float[Tensor, "rows pos"]:
        """A component's direct effect on the metric through the frozen final LayerNorm."""
        vec = vec[:, self.keep]
        value = frozen_ln_direct_effect(self.model, vec, self.scale, self.tokens[:, 1:])
        if self.counter is None:
            return value
        return value - frozen_ln_direct_effect(self.model, vec, self.scale, self.counter)

    def z(self, cache: dict, layer: int, head: int) -> Tensor:
        return cache[f"blocks.{layer}.attn.hook_z"][:, :, head]

    def ablated_z(self, layer: int, head: int, ablation: str, include_bos: bool) -> Tensor:
        """The head's z after ablation (corrupted: its z in the corrupted prompt's run;
        template-mean: the mean of that over the corrupted prompts of the row's group, per
        position (reference.atp.template_mean); mean: over the positions that predict a real
        token; any other kind as on running text, reference.heads.ablated_z)."""
        z = self.z(self.cache, layer, head)
        if ablation == "corrupted":
            return self.z(self.other, layer, head)
        if ablation == "template-mean":
            return template_mean(self.z(self.other, layer, head), self.groups, self.real)
        if ablation != "mean":
            return text_ablated_z(z, ablation, value_bias=value_bias_of(self.model, layer, head))
        # Position t counts when the token it predicts, t + 1, is real: the prompt's positions,
        # not the answer's (a target only) nor the padding's.
        real = torch.ones(z.shape[:2], dtype=torch.bool) if self.real is None else self.real
        predicts_real = real[:, 1:].clone().to(z.device)
        predicts_real[:, 0] &= include_bos
        weights = predicts_real[..., None].double()
        mean = (z[:, :-1].double() * weights).sum((0, 1)) / predicts_real.sum()
        return mean.to(z.dtype).expand_as(z)


@torch.no_grad()
def _run(
    ref: TaskReference, patches: dict[tuple[int, int], Tensor], freeze_ln: bool = False
) -> dict[str, Tensor]:
    """HEAD_VARIABLES and every component's change of direct effect ([rows, pos, component]:
    heads layer-major, MLP layers, LayerNorm) of one full pass with the `patches` z; with
    freeze_ln every LayerNorm scale (final included) is the clean run's."""
    model = ref.model
    n_layers, n_heads = model.cfg.n_layers, model.cfg.n_heads
    hooks = [patch_z(layer, head, z) for (layer, head), z in patches.items()]
    if freeze_ln:
        names = [name for name in ref.cache if name.endswith("hook_scale")]
        hooks += [(name, lambda x, hook: ref.cache[hook.name]) for name in names]
    with model.hooks(fwd_hooks=hooks):
        logits, cache = model.run_with_cache(ref.tokens)
    logit_diff = ref.metric(logits) - ref.metric_clean
    de_clean = sum(ref.de(ref.z(ref.cache, la, h) @ model.W_O[la, h]) for la, h in patches)
    de_ablated = sum(ref.de(z @ model.W_O[la, h]) for (la, h), z in patches.items())
    parts = []
    for layer in range(n_layers):
        for head in range(n_heads):
            if (layer, head) in patches:  # the ablated heads' own change is no repair
                parts.append(torch.zeros_like(logit_diff))
                continue
            name = f"blocks.{layer}.attn.hook_z"
            parts.append(
                ref.de(head_output(model, cache[name], layer, head))
                - ref.de(head_output(model, ref.cache[name], layer, head))
            )
    for layer in range(n_layers):
        name = f"blocks.{layer}.hook_mlp_out"
        if model.cfg.attn_only:
            parts.append(torch.zeros_like(logit_diff))
        else:
            parts.append(ref.de(cache[name]) - ref.de(ref.cache[name]))
    sr_heads = sum(parts[: n_layers * n_heads])
    sr_mlps = sum(parts[n_layers * n_heads :])
    scale = cache["ln_final.hook_scale"][:, ref.keep, 0]
    values = head_values(logit_diff, de_clean, de_ablated, sr_heads, sr_mlps, scale)
    parts.append(values["sr_ln"])
    values["components"] = torch.stack(parts, -1)
    return values


def reference_task_heads(
    ref: TaskReference,
    ablation: str,
    heads: Iterable[Sequence[int]] | None = None,
    mean_include_bos: bool = True,
    freeze_ln: bool = False,
) -> dict[tuple[int, int], dict[str, np.ndarray]]:
    """Per ablated (layer, head): HEAD_VARIABLES [rows, pos] and `components` [rows, pos,
    component], float64, from one full forward pass with its z replaced.

    Args:
        ref: the task's rows and clean runs.
        ablation: "corrupted", "resample" (row i + 1), "mean" (over real positions) or "zero".
        heads: (layer, head) pairs; None: every head.
        mean_include_bos: whether the mean z includes position 0.
        freeze_ln: every LayerNorm hook_scale of the ablated run (final included) is the
            clean run's.
    """
    out = {}
    for layer, head in all_heads(ref.model, heads):
        z_new = ref.ablated_z(layer, head, ablation, mean_include_bos)
        values = _run(ref, {(layer, head): z_new}, freeze_ln)
        out[layer, head] = {k: v.double().cpu().numpy() for k, v in values.items()}
    return out


def reference_task_set(
    ref: TaskReference, ablation: str, heads: Iterable[Sequence[int]], mean_include_bos: bool = True
) -> dict[str, np.ndarray]:
    """HEAD_VARIABLES (de_clean, de_ablated: the set's summed direct effect) and `components`
    of one full forward pass with every head of the set replaced at once.

    Args:
        ref: the task's rows and clean runs.
        ablation: as reference_task_heads.
        heads: the set's (layer, head) pairs.
        mean_include_bos: whether the mean z includes position 0.
    """
    patches = {
        (int(la), int(h)): ref.ablated_z(int(la), int(h), ablation, mean_include_bos)
        for la, h in heads
    }
    return {k: v.double().cpu().numpy() for k, v in _run(ref, patches).items()}


@torch.no_grad()
def _metric_with(ref: TaskReference, heads: list[tuple[int, int]], ablation: str, bos: bool):
    """The metric of one full forward pass with every head of `heads` ablated."""
    patches = [patch_z(la, h, ref.ablated_z(la, h, ablation, bos)) for la, h in heads]
    with ref.model.hooks(fwd_hooks=patches):
        return ref.metric(ref.model(ref.tokens))


def reference_conditional(
    ref: TaskReference,
    ablation: str,
    members: Iterable[Sequence[int]],
    candidates: Iterable[Sequence[int]],
    mean_include_bos: bool = True,
) -> dict[tuple[int, int], dict[str, np.ndarray]]:
    """Per candidate head u [rows, pos], float64, from full forward passes: `single`, the
    metric's drop with u ablated in the intact model, and `conditional`, its drop from the set
    ablated to the set and u ablated (CoAx's two effects, in the metric's own terms).

    Args:
        ref: the task's rows and clean runs.
        ablation: as reference_task_heads.
        members: the set's (layer, head) pairs.
        candidates: the heads scored (none of the set's).
        mean_include_bos: whether the mean z includes position 0.
    """
    base = [(int(la), int(h)) for la, h in members]
    with_set = _metric_with(ref, base, ablation, mean_include_bos)
    out = {}
    for la, h in candidates:
        u = (int(la), int(h))
        alone = _metric_with(ref, [u], ablation, mean_include_bos)
        both = _metric_with(ref, [*base, u], ablation, mean_include_bos)
        single, conditional = ref.metric_clean - alone, with_set - both
        out[u] = {"single": single.cpu().numpy(), "conditional": conditional.cpu().numpy()}
    return out
