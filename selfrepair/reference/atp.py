"""Slow, obvious references of attribution patching (engine.atp): autograd on a plain forward pass.

- `reference_atp`: TransformerLens' own forward (its block modules, full unembedding), z kept
  at hook_z, the correct token's logit centred over the vocabulary from the logits.
- `hf_reference_atp`: Hugging Face `transformers`' own model (GPT-2, GPT-NeoX/Pythia, Llama),
  z taken at the input of the attention output projection (c_proj, dense, o_proj), the
  centred logit from its logits. It shares no code with TransformerLens either.

Both estimate, per head, sum over positions of dM/dz . (z' - z) with M the sum of the centred
correct-token logits of a row (row estimates) or of one token (per-token estimates, one
backward pass per token). GradDrop (`drop_layer`): the same with layer l's attention and MLP
outputs detached in the forward pass (their values unchanged, no gradient through them). z' is
reference.heads.ablated_z's: resample, row (i + 1) mod batch; mean over every row and every
position but the last (a target only); zero. Hugging Face's z carries the value bias (and the
first LayerNorm's bias pushed through W_V), which TransformerLens folds into b_O (fold_ln,
fold_value_biases): its zero is Hugging Face's z equal to that bias (`value_offset`), the point
z' is measured from; zero-with-value-bias sets Hugging Face's z itself to 0, as CoAx's
register_head_ablation does. Neither shares code with the engine.

On a task (`TaskRows`), Hugging Face's reference takes the metric as the answer's centred logit
minus the counterfactual's, summed over the answer positions only; corrupted ablation's z' is
the z of Hugging Face's own run on each row's corrupted prompt, and the mean's is over the
positions whose next token is real.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from operator import attrgetter
from typing import TYPE_CHECKING

import numpy as np
import torch
from jaxtyping import Int
from torch import Tensor

from selfrepair.reference.heads import ablated_z, centred_target_logit, value_bias_of

if TYPE_CHECKING:
    from transformer_lens import HookedTransformer

__all__ = [
    "HF_MODULES",
    "TaskRows",
    "hf_layers",
    "hf_reference_atp",
    "reference_atp",
    "value_offset",
]


@dataclass(frozen=True)
class TaskRows:
    """What a task adds to its rows, for the reference (all optional).

    Args:
        counter: [rows, pos] counterfactual tokens: the metric is the logit difference.
        corrupted: [rows, pos + 1] each row's corrupted prompt: corrupted ablation's z.
        real: [rows, pos + 1] bool, not padding: the mean is over positions t with t + 1 real.
        scored: [rows, pos] bool, the answer positions the metric sums (default: all).
    """

    counter: Tensor | None = None
    corrupted: Tensor | None = None
    real: Tensor | None = None
    scored: Tensor | None = None
    groups: Tensor | None = None

    def metric(self, logits: Tensor, tokens: Tensor) -> Tensor:
        """m[b, t] from full logits: the centred answer logit (minus the counterfactual's),
        0 where not scored."""
        m = centred_target_logit(logits, tokens[:, 1:])
        if self.counter is not None:
            m = m - centred_target_logit(logits, self.counter)
        return m if self.scored is None else m * self.scored.to(m.dtype)

    def ablated(self, z: Tensor, ablation: str, include_bos: bool, z_corrupted) -> Tensor:
        """z' of [rows, tok, head, d_head]: the corrupted run's z, the mean over real
        positions, else reference.heads.ablated_z."""
        if ablation == "corrupted":
            return z_corrupted
        if ablation == "template-mean":
            return template_mean(z_corrupted, self.groups, self.real)
        if ablation == "mean" and self.real is not None:
            weights = self.real[:, 1:].clone().bool()
            weights[:, 0] &= include_bos
            return z[:, :-1][weights].double().mean(0).to(z.dtype).expand_as(z)
        return ablated_z(z, ablation, include_bos)


def template_mean(z_corrupted: Tensor, groups: Tensor | None, real: Tensor | None) -> Tensor:
    """Wang et al.'s mean ablation: at each position, the mean of z ([rows, tok, ...]) over the
    corrupted prompts of the row's group whose token there is real (one group without
    `groups`), each row's mean looked up in a loop over rows."""
    rows = z_corrupted.shape[0]
    groups = torch.zeros(rows, dtype=torch.long) if groups is None else groups.cpu()
    real = torch.ones(z_corrupted.shape[:2], dtype=torch.bool) if real is None else real.cpu()
    out = torch.zeros_like(z_corrupted)
    for i in range(rows):
        for t in range(z_corrupted.shape[1]):
            same = (groups == groups[i]) & real[:, t]
            if same.any():
                out[i, t] = z_corrupted[same.to(z_corrupted.device), t].double().mean(0)
    return out


def _grad(out: Tensor, zs: list[Tensor]) -> tuple[Tensor, ...]:
    """d out / d z for each z; zeros where out does not depend on z (a dropped layer)."""
    return torch.autograd.grad(
        out, zs, retain_graph=True, allow_unused=True, materialize_grads=True
    )


def _estimates(
    m: Tensor, zs: list[Tensor], dz: list[Tensor], n_heads: int, per_token: bool | np.ndarray
) -> dict[str, np.ndarray]:
    """Row estimates (one backward of every row's summed metric; rows do not interact) and, per
    token (every one, or where per_token [batch, pos] is True; NaN elsewhere), one backward of
    each m[b, t] alone. zs, dz: per layer [batch, pos, heads x d_head] or [batch, pos, head,
    d_head]."""
    n_layers, n_rows, n_pos = len(zs), m.shape[0], m.shape[1]

    def per_head(x: Tensor) -> Tensor:
        return x.reshape(*x.shape[:2], n_heads, -1).double()

    def contract(grads, rows=slice(None)) -> np.ndarray:
        return np.stack(
            [
                torch.einsum("bphd,bphd->hb", per_head(g[rows]), per_head(d[rows])).cpu().numpy()
                for g, d in zip(grads, dz, strict=True)
            ]
        )  # [layer, head, batch]

    out = {"row": contract(_grad(m.sum(), zs))}
    if per_token is not False:
        asked = np.ones((n_rows, n_pos), bool) if per_token is True else np.asarray(per_token)
        token = np.full((*out["row"].shape[:2], n_rows, n_pos), np.nan)
        for b, t in zip(*np.nonzero(asked), strict=True):
            grads = _grad(m[b, t], zs)
            token[:, :, b, t] = contract(grads, slice(b, b + 1))[:, :, 0]
        out["token"] = token
    assert len(out["row"]) == n_layers
    return out


def reference_atp(
    model: HookedTransformer,
    tokens: Int[Tensor, "batch pos_plus_1"],
    ablation: str = "resample",
    mean_include_bos: bool = True,
    drop_layer: int | None = None,
    per_token: bool | np.ndarray = False,
) -> dict[str, np.ndarray]:
    """AtP of every head from TransformerLens' plain forward pass.

    Args:
        model: the HookedTransformer.
        tokens: [batch, pos + 1] token rows; the last position is only a target, but it runs
            (as in reference.heads; its z is left out of the mean, as the engine's leaves it).
        ablation: "resample", "mean", "zero" or "zero-with-value-bias".
        mean_include_bos: whether the mean z includes position 0.
        drop_layer: GradDrop: detach this layer's attention and MLP outputs.
        per_token: also the per-token estimates (one backward per token): True for every
            token, or a bool [batch, pos] mask of the tokens wanted.

    Returns:
        "row": [layer, head, batch]; with per_token "token": [layer, head, batch, pos] (float64).
    """
    n_layers = model.cfg.n_layers
    tokens = tokens.to(model.W_U.device)
    zs: dict[int, Tensor] = {}

    def keep(x, hook):
        zs[int(hook.name.split(".")[1])] = x

    hooks = [(f"blocks.{layer}.attn.hook_z", keep) for layer in range(n_layers)]
    if drop_layer is not None:
        for name in ("hook_attn_out", "hook_mlp_out"):
            hooks.append((f"blocks.{drop_layer}.{name}", lambda x, hook: x.detach()))
    if not all(p.requires_grad for p in model.parameters()):
        raise ValueError("the reference needs the model's parameters to require grad")
    with torch.enable_grad(), model.hooks(fwd_hooks=hooks):
        logits = model(tokens)[:, :-1]  # every token runs; ablated_z's mean drops the last
        m = centred_target_logit(logits.float(), tokens[:, 1:])
        z = [zs[layer] for layer in range(n_layers)]
        dz = [
            ablated_z(x.detach(), ablation, mean_include_bos, None, value_bias_of(model, la))
            - x.detach()
            for la, x in enumerate(z)
        ]
        return _estimates(m, z, dz, model.cfg.n_heads, per_token)


# Per Hugging Face model type: its decoder layers, and in a layer the attention output
# projection (whose input is z) and the MLP output projection.
HF_MODULES = {
    "gpt2": ("transformer.h", "attn.c_proj", "mlp.c_proj"),
    "gpt_neox": ("gpt_neox.layers", "attention.dense", "mlp.dense_4h_to_h"),
    "llama": ("model.layers", "self_attn.o_proj", "mlp.down_proj"),
}


def hf_layers(hf_model) -> tuple[list, Callable, Callable, int]:
    """(decoder layers, layer -> attention output projection, layer -> MLP output projection,
    n_heads) of a Hugging Face GPT-2, GPT-NeoX or Llama causal LM."""
    cfg = hf_model.config
    if cfg.model_type not in HF_MODULES:
        raise NotImplementedError(f"no reference for model type {cfg.model_type!r}")
    layers, attn_out, mlp_out = HF_MODULES[cfg.model_type]
    n_heads = cfg.n_head if cfg.model_type == "gpt2" else cfg.num_attention_heads
    return list(attrgetter(layers)(hf_model)), attrgetter(attn_out), attrgetter(mlp_out), n_heads


def value_offset(hf_model, blk) -> Tensor:
    """The part of Hugging Face's z that TransformerLens' processed z lacks ([heads x d_head]):
    the value bias plus the first LayerNorm's bias through W_V (fold_ln, fold_value_biases);
    0 for Llama (RMSNorm has no bias, v_proj none by default)."""
    cfg = hf_model.config
    if cfg.model_type == "gpt2":
        d = cfg.n_embd
        w, b = blk.attn.c_attn.weight[:, 2 * d :], blk.attn.c_attn.bias[2 * d :]  # Conv1D: x @ w
        return blk.ln_1.bias @ w + b
    if cfg.model_type == "gpt_neox":
        qkv = blk.attention.query_key_value
        full = blk.input_layernorm.bias @ qkv.weight.T
        if qkv.bias is not None:
            full = full + qkv.bias
        head_size = cfg.hidden_size // cfg.num_attention_heads
        return full.view(cfg.num_attention_heads, 3 * head_size)[:, 2 * head_size :].reshape(-1)
    v_bias = blk.self_attn.v_proj.bias
    size = blk.self_attn.o_proj.in_features
    return v_bias if v_bias is not None else torch.zeros(size)


def hf_reference_atp(
    hf_model,
    tokens: Int[Tensor, "batch pos_plus_1"],
    ablation: str = "resample",
    mean_include_bos: bool = True,
    drop_layer: int | None = None,
    per_token: bool | np.ndarray = False,
    task: TaskRows | None = None,
) -> dict[str, np.ndarray]:
    """AtP of every head from Hugging Face's own forward pass (reference_atp's Args and
    Returns); z at the input of each layer's attention output projection, minus value_offset.
    With `task` (TaskRows) the task's metric, corrupted prompts and real positions."""
    blocks, attn_out, mlp_out, n_heads = hf_layers(hf_model)
    task = task or TaskRows()
    zs: dict[int, Tensor] = {}
    handles = []
    for layer, blk in enumerate(blocks):

        def keep(module, args, layer=layer):
            zs[layer] = args[0]

        handles.append(attn_out(blk).register_forward_pre_hook(keep))
    if drop_layer is not None:
        for module in (attn_out(blocks[drop_layer]), mlp_out(blocks[drop_layer])):
            handles.append(module.register_forward_hook(lambda mod, args, out: out.detach()))

    def processed(layer: int, blk) -> Tensor:  # TransformerLens' z: its zero is HF's offset
        shaped = zs[layer].detach().unflatten(-1, (n_heads, -1))
        return shaped - value_offset(hf_model, blk).detach().view(n_heads, -1)

    try:
        corrupted = {}
        if task.corrupted is not None:
            with torch.no_grad():
                hf_model(task.corrupted)
            corrupted = {layer: processed(layer, blk) for layer, blk in enumerate(blocks)}
        with torch.enable_grad():
            logits = hf_model(tokens).logits[:, :-1].float()
            m = task.metric(logits, tokens)
            z, dz = [], []
            for layer, blk in enumerate(blocks):
                z.append(zs[layer])
                clean = processed(layer, blk)
                if ablation == "zero-with-value-bias":  # CoAx's: Hugging Face's slice is 0
                    new = clean - zs[layer].detach().unflatten(-1, (n_heads, -1))
                else:
                    new = task.ablated(clean, ablation, mean_include_bos, corrupted.get(layer))
                dz.append(new - clean)
            return _estimates(m, z, dz, n_heads, per_token)
    finally:
        for handle in handles:
            handle.remove()
