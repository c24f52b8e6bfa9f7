"""What the engine's entry points take and give: checks on the heads and tokens asked for, the
number of heads stacked per pass, and the (layer, head, batch, pos) coordinates of their stores."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import Tensor

if TYPE_CHECKING:
    from transformer_lens import HookedTransformer

__all__ = [
    "CPU_PASS_BYTES",
    "default_heads_per_pass",
    "grid_coords",
    "normalize_heads",
    "validate_tokens",
]


def normalize_heads(
    model: HookedTransformer, heads: Iterable[Sequence[int]] | None
) -> dict[int, list[int]]:
    """{layer: sorted heads}; all heads when None. Out-of-range heads fail naming the model size."""
    n_layers, n_heads = model.cfg.n_layers, model.cfg.n_heads
    if heads is None:
        return {layer: list(range(n_heads)) for layer in range(n_layers)}
    by_layer: dict[int, set[int]] = {}
    for pair in heads:
        layer, head = (int(x) for x in pair)
        if not (0 <= layer < n_layers and 0 <= head < n_heads):
            raise ValueError(
                f"head L{layer}H{head} is out of range: {model.cfg.model_name} has {n_layers} "
                f"layers of {n_heads} heads (layers and heads count from 0)"
            )
        by_layer.setdefault(layer, set()).add(head)
    if not by_layer:
        raise ValueError("heads is empty: pass None for all heads or a list of (layer, head)")
    return {layer: sorted(hs) for layer, hs in sorted(by_layer.items())}


def validate_tokens(model: HookedTransformer, tokens: Tensor) -> None:
    """Fail naming the reason unless tokens are [batch, pos] ids of the model's vocabulary that
    fit its context."""
    if (
        not isinstance(tokens, Tensor)
        or tokens.dim() != 2
        or tokens.dtype
        not in (
            torch.int64,
            torch.int32,
        )
    ):
        raise TypeError("tokens must be an integer tensor of shape [batch, pos]")
    if tokens.shape[1] < 2:
        raise ValueError("tokens need at least 2 positions (position t predicts token t+1)")
    if tokens.shape[1] - 1 > model.cfg.n_ctx:
        raise ValueError(
            f"rows of {tokens.shape[1]} tokens exceed the context of {model.cfg.model_name} "
            f"({model.cfg.n_ctx}): lower data.seq_len"
        )
    if int(tokens.min()) < 0 or int(tokens.max()) >= model.cfg.d_vocab:
        raise ValueError(
            f"token ids must lie in [0, {model.cfg.d_vocab}); got {int(tokens.min())}.."
            f"{int(tokens.max())}: the tokens were made with another tokenizer"
        )


# On a CPU, a pass's largest activation is kept under this size: glibc's malloc serves blocks
# under 32 MiB from its heap and reuses them, while larger ones are mapped afresh and page-faulted
# in on every use (about a tenth of the engine's time at gpt2-small shapes).
CPU_PASS_BYTES = 24 * 2**20


def default_heads_per_pass(model: HookedTransformer, rows: int, n_pos: int) -> int:
    """Heads stacked per ablated pass when not given: all of a layer's on a GPU; on a CPU as many
    as keep the pass's widest activation ([heads x rows x pos, width]) within CPU_PASS_BYTES."""
    cfg = model.cfg
    if model.W_U.device.type != "cpu":
        return cfg.n_heads
    n_kv = cfg.n_key_value_heads or cfg.n_heads
    width = max(cfg.d_mlp or 0, (cfg.n_heads + 2 * n_kv) * cfg.d_head, cfg.d_model)
    per_head = rows * n_pos * width * model.W_U.element_size()
    return max(1, min(cfg.n_heads, CPU_PASS_BYTES // per_head))


def grid_coords(model: HookedTransformer, n_rows: int, n_pos: int) -> dict[str, np.ndarray]:
    """The layer, head, batch and pos coordinates of a store of every head on every token."""
    return {
        "layer": np.arange(model.cfg.n_layers),
        "head": np.arange(model.cfg.n_heads),
        "batch": np.arange(n_rows),
        "pos": np.arange(n_pos),
    }
