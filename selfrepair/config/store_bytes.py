"""The bytes of each per-token or per-head store, uncompressed, from the shapes its stage writes
(selfrepair.config.storage adds them up over the planned jobs). What a store's shape needs of a
model (n_layers, n_heads, d_mlp) is the catalogue's Shapes."""

from __future__ import annotations

import math

from selfrepair.catalogue import Shapes
from selfrepair.variables import HEAD_VARIABLES, REPAIR_TOTALS, n_components

__all__ = ["F32", "F64", "I64", "all_ablation_bytes", "clean_bytes"]
__all__ += ["clean_top_bytes", "detail_bytes", "repair_sums_bytes", "repair_summary_bytes"]
__all__ += ["top_ablation_bytes"]

F32 = 4  # float32, int32
F64 = I64 = 8  # float64, int64


def _components(d: Shapes) -> int:
    return n_components(d.n_layers, d.n_heads)


def clean_bytes(d: Shapes, n_tokens: int) -> int:
    """clean_cache: logit_clean, ln_scale_clean, loss, de_embed, de_pos_embed, de_unembed_bias
    and target per token; de_head per (layer, head), de_attn_bias and de_mlp per layer."""
    return F32 * (7 + d.heads + 2 * d.n_layers) * n_tokens


def clean_top_bytes(d: Shapes, n_tokens: int, k: int) -> int:
    """clean_cache under engine.store_tokens: top (analysis.clean_layout): the per-token values
    but those per layer, with the sums of de_head, de_attn_bias and de_mlp per token; per head
    its k best tokens' DE and number (int32)."""
    return F32 * (7 + 3) * n_tokens + d.heads * min(k, n_tokens) * 2 * F32


def all_ablation_bytes(n_heads_total: int, n_tokens: int, n_rows: int) -> int:
    """engine.store_tokens: all (measure_heads): the 8 float32 HEAD_VARIABLES per (head, token),
    the clean logit and LN scale per token, the resample partner (int64) per row."""
    return len(HEAD_VARIABLES) * F32 * n_heads_total * n_tokens + 2 * F32 * n_tokens + 8 * n_rows


def top_ablation_bytes(
    n_heads_total: int,
    n_tokens_model: int,
    shard_tokens: int,
    shard_rows: int,
    top_fraction: float,
    bootstrap_resamples: int,
    explorer_tokens_per_head: int,
    context: int,
    n_figure_heads: int = 0,
) -> int:
    """engine.store_tokens: top, one shard (analysis.shards.top_layout): each head's share of
    its top tokens, the figure heads' every token, sums, bootstrap parts, row sums, candidates."""
    k_shard = math.ceil(top_fraction * n_tokens_model) * shard_tokens / n_tokens_model
    return math.ceil(
        n_heads_total * k_shard * (8 * F32 + F32)
        + n_figure_heads * shard_tokens * 8 * F32
        + n_heads_total * 8 * (F64 + I64)
        + n_heads_total * bootstrap_resamples * 2 * F64
        + n_heads_total * shard_rows * 2 * F32
        + shard_tokens * 2 * F32
        + shard_rows * I64
        + n_heads_total * 2 * explorer_tokens_per_head * (2 * I64 + 3 * F32 + 2 * context * F32)
    )


def repair_sums_bytes(d: Shapes) -> int:
    """RepairSums.dataset: float64 sums per (head, component) and of REPAIR_TOTALS, all and top,
    int64 counts, the downstream mask."""
    per_head = (2 * _components(d) + 2 + 2 * len(REPAIR_TOTALS)) * F64
    return d.heads * per_head + d.n_layers * _components(d)


def repair_summary_bytes(d: Shapes) -> int:
    """repair_summary: all_dde, top_dde, top_share per (head, component), the REPAIR_TOTALS'
    means and the counts per head (float64), the downstream mask."""
    per_head = (3 * _components(d) + 2 * (len(REPAIR_TOTALS) + 1)) * F64
    return d.heads * per_head + d.n_layers * _components(d)


def detail_bytes(d: Shapes, n_heads: int, k: int) -> int:
    """RepairSums.detail_dataset: per kept token, every component's dDE and REPAIR_TOTALS
    (float32), its layer, head, row and position (int64)."""
    return n_heads * k * (F32 * (_components(d) + len(REPAIR_TOTALS)) + 4 * 8)
