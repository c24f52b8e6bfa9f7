"""Slow, obvious reference of who repairs whom (engine.attribution): per ablated head, one full
forward pass with a hook replacing its z, and every component's direct effect taken from the
ablated run's cache and pushed through the full unembedding with the final LayerNorm frozen at
the clean scale, minus the same from the clean run. The LayerNorm term is what the components
leave of the logit change (reference.heads). Shares no code with the engine."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING

import numpy as np
import torch
from jaxtyping import Int
from torch import Tensor

from selfrepair.reference.heads import (
    _clean_run,
    _reference_head,
    ablated_z,
    ablation_hooks,
    all_heads,
    head_output,
    value_bias_of,
)

if TYPE_CHECKING:
    from transformer_lens import HookedTransformer

__all__ = ["reference_component_effects"]


def reference_component_effects(
    model: HookedTransformer,
    tokens: Int[Tensor, "batch pos"],
    ablation: str = "resample",
    heads: Iterable[Sequence[int]] | None = None,
    mean_include_bos: bool = True,
    freeze_ln: bool = False,
) -> dict[tuple[int, int], np.ndarray]:
    """Per ablated (layer, head): [batch, pos, component] changes of direct effect, components
    as variables.component_names (every head, every MLP layer, the final LayerNorm), float64.

    Args:
        model: the HookedTransformer (not modified).
        tokens: [batch, pos + 1] token rows.
        ablation: "resample" (row (i + 1) mod batch), "mean" or "zero".
        heads: (layer, head) pairs; None: every head.
        mean_include_bos: whether the mean z includes position 0.
        freeze_ln: every LayerNorm scale of the ablated run is the clean run's.
    """
    n_layers, n_heads = model.cfg.n_layers, model.cfg.n_heads
    tokens = tokens.to(model.W_U.device)
    out = {}
    with torch.no_grad():
        clean = _clean_run(model, tokens)
        for layer, head in all_heads(model, heads):
            z_clean = clean.cache[f"blocks.{layer}.attn.hook_z"][:, :, head]
            z_new = ablated_z(
                z_clean, ablation, mean_include_bos, value_bias=value_bias_of(model, layer, head)
            )
            hooks = ablation_hooks(clean.cache, layer, head, z_new, freeze_ln)
            with model.hooks(fwd_hooks=hooks):
                _, cache = model.run_with_cache(tokens)
            parts = [
                clean.de(head_output(model, cache[f"blocks.{lay}.attn.hook_z"], lay, hd))
                - clean.head_de[(lay, hd)]
                for lay in range(n_layers)
                for hd in range(n_heads)
            ]
            # The ablated head's own change is its direct effect's, not a repair.
            parts[layer * n_heads + head] = torch.zeros_like(parts[0])
            for lay in range(n_layers):
                if model.cfg.attn_only:
                    parts.append(torch.zeros_like(parts[0]))
                else:
                    mlp = cache[f"blocks.{lay}.hook_mlp_out"]
                    parts.append(clean.de(mlp) - clean.mlp_de[lay])
            values = _reference_head(model, tokens, clean, layer, head, z_new, freeze_ln)
            parts.append(values["sr_ln"])
            out[layer, head] = torch.stack(parts, -1).double().cpu().numpy()
    return out
