"""Matmul FLOPs (2 m n k per [m, k] x [k, n] product) of a forward pass, counted from shapes.

Only matrix products are counted: norms, activations, softmax and the residual adds are a few
FLOPs per element and no part of what a peak matmul rate measures. Causal attention is counted
as the products a causal kernel needs (query i against keys 0..i); causal=False counts the full
square that TransformerLens' eager attention multiplies before masking.
All counts are per sequence of `n_pos` positions; divide by n_pos for per token. The shapes are
the package's one shape class, selfrepair.catalogue.Shapes (`Shapes.of(cfg)` of a model).
"""

from __future__ import annotations

from selfrepair.catalogue import Shapes

__all__ = [
    "Shapes",
    "all_heads",
    "atp_flops",
    "attention_flops",
    "backward_flops",
    "block_flops",
    "direct_effect_flops",
    "engine_flops",
    "forward_flops",
    "graddrop_flops",
    "head_unit_flops",
    "matmul",
    "mlp_flops",
    "query_key_pairs",
    "reference_flops",
    "unembed_flops",
]


def matmul(m: int, k: int, n: int) -> int:
    """FLOPs of an [m, k] x [k, n] product (one multiply and one add per term)."""
    return 2 * m * k * n


def query_key_pairs(n_pos: int, causal: bool = True) -> int:
    """Query-key pairs attention multiplies: position i against 0..i (causal) or all."""
    return n_pos * (n_pos + 1) // 2 if causal else n_pos * n_pos


def attention_flops(s: Shapes, n_pos: int, causal: bool = True) -> int:
    """Q, K, V projections, scores q.k, pattern.v and the output projection W_O."""
    n_kv = s.n_kv_heads or s.n_heads
    qkv = matmul(n_pos, s.d_model, (s.n_heads + 2 * n_kv) * s.d_head)
    scores_and_mix = 2 * s.n_heads * query_key_pairs(n_pos, causal) * 2 * s.d_head
    out = matmul(n_pos, s.n_heads * s.d_head, s.d_model)
    return qkv + scores_and_mix + out


def mlp_flops(s: Shapes, n_pos: int) -> int:
    """W_in and W_out (and W_gate for a gated MLP)."""
    if s.attn_only:
        return 0
    return (3 if s.gated_mlp else 2) * matmul(n_pos, s.d_model, s.d_mlp)


def block_flops(s: Shapes, n_pos: int, causal: bool = True) -> int:
    return attention_flops(s, n_pos, causal) + mlp_flops(s, n_pos)


def unembed_flops(s: Shapes, n_pos: int) -> int:
    return matmul(n_pos, s.d_model, s.d_vocab)


def forward_flops(s: Shapes, n_pos: int, unembed: bool = True, causal: bool = True) -> int:
    """One forward pass of a sequence through every block (and the full unembedding)."""
    blocks = s.n_layers * block_flops(s, n_pos, causal)
    return blocks + (unembed_flops(s, n_pos) if unembed else 0)


def reference_flops(s: Shapes, n_pos: int, n_ablated: int, causal: bool = True) -> int:
    """The original code's method: a clean pass plus one full forward pass per ablated head."""
    return (1 + n_ablated) * forward_flops(s, n_pos, causal=causal)


def direct_effect_flops(s: Shapes, n_pos: int, layer: int) -> int:
    """The engine's contractions for one ablated head of `layer`: (z' - z) W_O into the stream,
    W_O . u, the head's clean and ablated z . (W_O u), the projection on u of each downstream
    attention and MLP output, and of the final residual."""
    d_m, d_h = s.d_model, s.d_head
    later = s.n_layers - 1 - layer
    outputs = later * (1 if s.attn_only else 2) + (1 if s.sequential else 0) + 1
    per_pos = 2 * d_h * d_m + 2 * d_h * d_m + 2 * 2 * d_h + outputs * 2 * d_m
    return n_pos * per_pos


def engine_flops(
    s: Shapes, n_pos: int, heads_per_layer: dict[int, int], causal: bool = True
) -> int:
    """selfrepair.engine.self_repair.measure_heads: one clean pass without unembedding (projecting every
    attention and MLP output and the final residual on u), then per ablated head of layer L the
    MLP of L (sequential blocks only), every block above L and its direct-effect contractions."""
    outputs = s.n_layers * (1 if s.attn_only else 2) + 1  # each layer's outputs and the final
    total = forward_flops(s, n_pos, unembed=False, causal=causal) + n_pos * outputs * 2 * s.d_model
    for layer, k in heads_per_layer.items():
        ablated_pass = (s.n_layers - 1 - layer) * block_flops(s, n_pos, causal)
        if s.sequential:
            ablated_pass += mlp_flops(s, n_pos)
        total += k * (ablated_pass + direct_effect_flops(s, n_pos, layer))
    return total


def all_heads(s: Shapes) -> dict[int, int]:
    return {layer: s.n_heads for layer in range(s.n_layers)}


def block_backward_flops(s: Shapes, n_pos: int, causal: bool = True) -> int:
    """Activation gradients (no weight gradients) through one block: each MLP and projection
    matmul once more (dX = dY W^T), the attention's scores and mixing twice (both operands)."""
    n_kv = s.n_kv_heads or s.n_heads
    qkv = matmul(n_pos, s.d_model, (s.n_heads + 2 * n_kv) * s.d_head)
    scores_and_mix = 2 * s.n_heads * query_key_pairs(n_pos, causal) * 2 * s.d_head
    out = matmul(n_pos, s.n_heads * s.d_head, s.d_model)
    return qkv + 2 * scores_and_mix + out + mlp_flops(s, n_pos)


def _first_layer_backward(s: Shapes, n_pos: int) -> int:
    """Down to a layer's z from its output: its output projection, and its MLP where that
    reads the head."""
    out = matmul(n_pos, s.n_heads * s.d_head, s.d_model)
    return out + (mlp_flops(s, n_pos) if s.sequential else 0)


def backward_flops(
    s: Shapes,
    n_pos: int,
    dropped: int | None = None,
    causal: bool = True,
    down_to: int = 0,
    one_head: bool = False,
) -> int:
    """One backward pass of engine.atp from the metric down to the z of every layer from
    `down_to` up (every block above it in full, that layer down to its z), and each asked
    layer's gradient contracted with z' - z per head (with one_head: one head of `down_to`
    only, a head unit). With `dropped` (GradDrop) the pass starts at that layer's input with
    the AtP pass's gradient at its output (engine.gradients: the blocks above and the metric
    are not run again, the dropped block not at all) and only the layers below it are asked."""
    top = s.n_layers if dropped is None else dropped
    blocks = (top - 1 - down_to) * block_backward_flops(s, n_pos, causal)
    metric = n_pos * 2 * s.d_model if dropped is None else 0  # x . u per position, backward
    if one_head:
        contractions = n_pos * 2 * s.d_head
    else:
        contractions = (top - down_to) * n_pos * 2 * s.n_heads * s.d_head
    return blocks + _first_layer_backward(s, n_pos) + metric + contractions


def head_unit_flops(s: Shapes, n_pos: int, graddrop: bool = False, causal: bool = True) -> int:
    """engine.atp's estimates of every head over its own tokens: one backward pass per head
    down to its layer; with graddrop, GradDrop's: one more per layer d above the head, from d's
    input down to the head's layer."""
    total = 0
    for layer in range(s.n_layers):
        if graddrop:
            drops = range(layer + 1, s.n_layers)
            per_head = sum(backward_flops(s, n_pos, d, causal, layer, True) for d in drops)
        else:
            per_head = backward_flops(s, n_pos, None, causal, layer, True)
        total += s.n_heads * per_head
    return total


def atp_flops(s: Shapes, n_pos: int, causal: bool = True) -> int:
    """engine.atp's row estimates of every head: a clean forward pass without unembedding (the
    metric is x . u per position) and one backward pass."""
    forward = forward_flops(s, n_pos, unembed=False, causal=causal) + n_pos * 2 * s.d_model
    return forward + backward_flops(s, n_pos, causal=causal)


def graddrop_flops(s: Shapes, n_pos: int, causal: bool = True) -> int:
    """GradDrop's backward passes on top of AtP's: one per dropped layer d = 1 .. L - 1 from d's
    input down (dropping layer 0 changes only layer 0's heads, to 0)."""
    return sum(backward_flops(s, n_pos, dropped, causal) for dropped in range(1, s.n_layers))
