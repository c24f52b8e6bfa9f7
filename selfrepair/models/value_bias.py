"""The value biases TransformerLens folds into b_O, kept beside the model.

TransformerLens' weight processing (fold_value_biases, run by from_pretrained and
load_and_process_state_dict after fold_ln and the centring) moves each head's value bias b_V
into the layer's output bias b_O and sets b_V to 0, since attention patterns sum to 1: hook_z is
then the head's z without b_V, while the slice of the attention output projection's input that a
Hugging Face model holds for the head (GPT-2's c_proj, Llama's o_proj, GPT-NeoX's dense) is
z + b_V. Ablating that whole slice, as CoAx's register_head_ablation does, is z' = -b_V in the
processed model. TransformerLens keeps no copy of the biases it folds, so the loaders
(models.loading, models.builders) fold under `recording`, which copies each layer's b_V as it is
folded, and attach them to the model as the buffer FOLDED_B_V (not persistent: the state dict,
the forward pass and every other number stay as they were).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import TYPE_CHECKING

import torch
from torch import Tensor

if TYPE_CHECKING:
    from transformer_lens import HookedTransformer

__all__ = ["FOLDED_B_V", "attach", "folded_value_bias", "recording"]

FOLDED_B_V = "folded_b_V"


def _value_biases(state_dict: dict[str, Tensor], cfg) -> Tensor:
    """[layer, head, d_head] b_V of a HookedTransformer state dict (grouped-query models' per
    key-value head, repeated to every head as their attention does); 0 where it has none."""
    out = torch.zeros(cfg.n_layers, cfg.n_heads, cfg.d_head, dtype=torch.float32)
    for layer in range(cfg.n_layers):
        for key in (f"blocks.{layer}.attn.b_V", f"blocks.{layer}.attn._b_V"):
            if key in state_dict:
                b_v = state_dict[key].detach().to("cpu", torch.float32)
                out[layer] = b_v.repeat_interleave(cfg.n_heads // b_v.shape[0], dim=0)
    return out


@contextlib.contextmanager
def recording() -> Iterator[list[Tensor]]:
    """While open, every fold of value biases by TransformerLens first copies the biases it
    folds ([layer, head, d_head], float32) into the list yielded; the fold itself is
    TransformerLens' own, unchanged."""
    from transformer_lens.weight_processing import ProcessWeights

    original = ProcessWeights.__dict__["fold_value_biases"]
    kept: list[Tensor] = []

    def fold_keeping(state_dict, cfg, adapter=None):
        kept.append(_value_biases(state_dict, cfg))
        return original.__func__(state_dict, cfg, adapter)

    ProcessWeights.fold_value_biases = staticmethod(fold_keeping)
    try:
        yield kept
    finally:
        ProcessWeights.fold_value_biases = original


def attach(model: HookedTransformer, kept: list[Tensor]) -> HookedTransformer:
    """The model with the value biases its last fold removed as its FOLDED_B_V buffer, on its
    device and in its dtype (0 when its weights were not folded: hook_z is then the whole
    slice)."""
    cfg = model.cfg
    biases = kept[-1] if kept else torch.zeros(cfg.n_layers, cfg.n_heads, cfg.d_head)
    model.register_buffer(
        FOLDED_B_V, biases.to(model.W_U.device, model.W_U.dtype), persistent=False
    )
    return model


def folded_value_bias(model: HookedTransformer) -> Tensor:
    """[layer, head, d_head] the value biases folded into b_O when the model was loaded;
    ValueError naming the fix for a model loaded otherwise."""
    biases = getattr(model, FOLDED_B_V, None)
    if biases is None:
        raise ValueError(
            "the model carries no record of the value biases TransformerLens folded into b_O: "
            "load it with selfrepair.load_model (or models.builders.random_model)"
        )
    return biases
