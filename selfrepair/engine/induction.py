"""The heads' induction scores on a task's prompts from one clean pass with TransformerLens'
attention-pattern hooks (the reduction is tasks.induction.prefix_matching_score)."""

from __future__ import annotations

import numpy as np
import torch

from selfrepair.tasks.induction import prefix_matching_score

__all__ = ["induction_scores"]


@torch.no_grad()
def induction_scores(model, tokens: np.ndarray, length: int, batch_size: int) -> np.ndarray:
    """[layer, head] mean prefix-matching attention (prefix_matching_score) over the prompts.

    Args:
        model: a HookedTransformer.
        tokens: [prompt, pos] the induction rows fed to the model (BOS + sequence + sequence
            but its last token).
        length: the repeated sequence's tokens.
        batch_size: prompts per pass.
    """
    layers = range(model.cfg.n_layers)
    total = np.zeros((model.cfg.n_layers, model.cfg.n_heads))
    for start in range(0, len(tokens), batch_size):
        chunk = torch.as_tensor(tokens[start : start + batch_size], device=model.cfg.device)
        _, cache = model.run_with_cache(
            chunk, names_filter=lambda name: name.endswith("hook_pattern"), return_type=None
        )
        pattern = torch.stack([cache["pattern", layer] for layer in layers], 1)
        total += prefix_matching_score(pattern.float().cpu().numpy(), length) * len(chunk)
    return total / len(tokens)
