"""The heads' induction scores on a task's prompts from one clean pass with attention-pattern
hooks, on TransformerLens' model or its stand-in (the reduction is
tasks.induction.prefix_matching_score)."""

from __future__ import annotations

import numpy as np
import torch

from selfrepair.tasks.induction import prefix_matching_score

__all__ = ["attention_patterns", "induction_scores"]


@torch.no_grad()
def induction_scores(model, tokens: np.ndarray, length: int, batch_size: int) -> np.ndarray:
    """[layer, head] mean prefix-matching attention (prefix_matching_score) over the prompts.

    Args:
        model: a HookedTransformer or its stand-in (models.standin).
        tokens: [prompt, pos] the induction rows fed to the model (BOS + sequence + sequence
            but its last token).
        length: the repeated sequence's tokens.
        batch_size: prompts per pass.
    """
    n_layers = model.cfg.n_layers
    total = np.zeros((n_layers, model.cfg.n_heads))
    for start in range(0, len(tokens), batch_size):
        chunk = torch.as_tensor(tokens[start : start + batch_size], device=model.cfg.device)
        pattern = torch.stack(attention_patterns(model, chunk), 1)
        total += prefix_matching_score(pattern.float().cpu().numpy(), length) * len(chunk)
    return total / len(tokens)


def attention_patterns(model, tokens) -> list[torch.Tensor]:
    """Each layer's attention pattern [batch, head, query, key] of one clean pass, kept by hooks
    (the pass stops after the last block: no logits)."""
    kept: dict[int, torch.Tensor] = {}

    def keep(x, hook):
        kept[hook.layer()] = x

    n_layers = model.cfg.n_layers
    hooks = [(f"blocks.{la}.attn.hook_pattern", keep) for la in range(n_layers)]
    with model.hooks(fwd_hooks=hooks):
        model(tokens, stop_at_layer=n_layers)
    return [kept[la] for la in range(n_layers)]
