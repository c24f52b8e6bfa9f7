"""TransformerLens' pre-norm block forward, computed with fused kernels.

TransformerLens writes its blocks for inspection: the attention pattern is built in full with
separate scale, mask, softmax and NaN-guard passes, GELU takes seven elementwise passes and each
LayerNorm five. On a CPU those memory-bound passes cost as much as the matmuls. `run_block`
computes the same block from the block's own parameters with one matmul for Q, K and V,
`scaled_dot_product_attention`, `F.layer_norm`/`F.rms_norm` and a one-pass GELU, and calls the
block's hook points that the engine uses (FUSED_HOOKS), so hooks there see and may replace the
same tensors as in TransformerLens. The attention's own `apply_rotary` is reused unchanged. Modules are told apart by kind
(selfrepair.models.kinds), so the blocks of the TransformerLens-free stand-in
(selfrepair.models.standin) run here too without importing TransformerLens.

The block itself runs instead (`block(resid)`) whenever the fused path does not cover it: an
architecture outside `unsupported_reason`'s list, or a hook on a point it does not call.
"""

from __future__ import annotations

from contextlib import contextmanager
from functools import partial

import torch
import torch.nn.functional as F
from jaxtyping import Float
from torch import Tensor

from selfrepair.models.kinds import (
    NORMS,
    POST_NORM_ARCHITECTURES,
    centres,
    has_bias,
    has_weight,
    is_attention,
    is_gated_mlp,
    is_hook_point,
    is_mlp,
    is_norm,
    kind,
)

__all__ = [
    "FUSED_HOOKS",
    "NORMS",
    "TANH_GELUS",
    "activation",
    "attention",
    "cached_weights",
    "can_fuse",
    "has_other_hooks",
    "mlp_forward",
    "normalize",
    "qkv_weights",
    "run_block",
    "run_mlp",
    "unsupported_reason",
]

# Hook points (relative to the block) that the fused forward calls with the tensors
# TransformerLens passes them; a hook anywhere else makes the block run as TransformerLens'.
FUSED_HOOKS = frozenset(
    {
        "hook_resid_pre",
        "ln1.hook_scale",
        "ln1.hook_normalized",
        "attn.hook_z",
        "hook_attn_out",
        "hook_resid_mid",
        "ln2.hook_scale",
        "ln2.hook_normalized",
        "mlp.hook_pre",
        "mlp.hook_pre_linear",
        "mlp.hook_post",
        "hook_mlp_out",
        "hook_resid_post",
    }
)

TANH_GELUS = ("gelu_new", "gelu_fast", "gelu_pytorch_tanh")  # the same function, fused by torch


def unsupported_reason(block) -> str | None:
    """Why the fused forward cannot compute this block exactly as TransformerLens does, or None."""
    cfg = block.cfg
    checks = {
        "post-norm or sandwich-norm block": cfg.original_architecture in POST_NORM_ARCHITECTURES
        or cfg.use_normalization_before_and_after,
        "attention type": not is_attention(block.attn)
        or block.attn.attn_type != "global"
        or cfg.attention_dir != "causal"
        or block.attn._attention_dir_override not in (None, "causal"),
        "positional embedding": cfg.positional_embedding_type not in ("standard", "rotary"),
        "attention extras": cfg.use_attn_in
        or cfg.use_split_qkv_input
        or cfg.use_qk_norm
        or cfg.clip_qkv is not None
        or cfg.use_logn_attn
        or cfg.use_attention_sinks
        or cfg.attn_scores_soft_cap > 0
        or cfg.load_in_4bit,
        "MLP type": cfg.attn_only is False
        and (not is_mlp(block.mlp) or cfg.is_layer_norm_activation()),
        "norm type": not is_norm(block.ln1) or (not cfg.attn_only and not is_norm(block.ln2)),
        "hooked MLP input": cfg.use_hook_mlp_in,
    }
    bad = [name for name, failed in checks.items() if failed]
    return ", ".join(bad) if bad else None


def has_other_hooks(block) -> bool:
    """True if a hook sits on a hook point of the block that the fused forward does not call."""
    return any(
        is_hook_point(module)
        and name not in FUSED_HOOKS
        and bool(module._forward_hooks or module._forward_pre_hooks)
        for name, module in block.named_modules()
    )


def can_fuse(block) -> bool:
    return unsupported_reason(block) is None and not has_other_hooks(block)


def normalize(ln, x: Float[Tensor, "batch pos d_model"]) -> Float[Tensor, "batch pos d_model"]:
    """ln(x) as TransformerLens computes it; the fused kernel unless the scale is hooked."""
    cfg = ln.cfg
    if cfg.dtype not in (torch.float32, torch.float64):
        x = x.float()  # TransformerLens normalises reduced precision in float32
    centre = centres(ln)
    if ln.hook_scale._forward_hooks or ln.hook_normalized._forward_hooks:
        if centre:
            x = x - x.mean(-1, keepdim=True)
        scale = ln.hook_scale((x.pow(2).mean(-1, keepdim=True) + ln.eps).sqrt())
        y = ln.hook_normalized(x / scale)
    elif centre:
        y = F.layer_norm(x, x.shape[-1:], eps=ln.eps)
    else:
        y = F.rms_norm(x, x.shape[-1:], eps=ln.eps)
    y = y.to(cfg.dtype)
    if has_bias(ln):
        return y * ln.w + ln.b
    if has_weight(ln):
        return y * ln.w
    return y


# While `cached_weights()` is active: per attention module, the merged Q/K/V weights and the
# identity and version counters of the parameters they were built from (rebuilt if a parameter
# is replaced or modified in place). Scoped so the copy lives only as long as a computation.
_QKV_CACHE: dict | None = None


@contextmanager
def cached_weights():
    """Build each block's merged Q/K/V weights once for the calls inside, not once per call."""
    global _QKV_CACHE
    outer = _QKV_CACHE
    _QKV_CACHE = {} if outer is None else outer
    try:
        yield
    finally:
        _QKV_CACHE = outer


def version(t: Tensor) -> int | None:
    """In-place modification counter (inference tensors have none: they cannot be modified
    outside inference mode, and the cache lives inside one computation)."""
    return None if t.is_inference() else t._version


def qkv_weights(attn) -> tuple[Tensor, Tensor, list[int]]:
    """Q, K and V projections as one [d_model, (q + 2 kv heads) d_head] matrix and its bias;
    grouped-query K and V keep their n_key_value_heads (expanded after the matmul)."""
    grouped = kind(attn) == "GroupedQueryAttention" and not attn.cfg.ungroup_grouped_query_attention
    w_k, b_k = (attn._W_K, attn._b_K) if grouped else (attn.W_K, attn.b_K)
    w_v, b_v = (attn._W_V, attn._b_V) if grouped else (attn.W_V, attn.b_V)
    params = (attn.W_Q, w_k, w_v, attn.b_Q, b_k, b_v)
    key = tuple((p.data_ptr(), version(p), p.dtype, p.device, p.shape) for p in params)
    cached = _QKV_CACHE.get(id(attn)) if _QKV_CACHE is not None else None
    if cached is not None and cached[0] == key:
        return cached[1]
    w = torch.cat(params[:3])  # [heads, d_model, d_head]
    b = torch.cat(params[3:])  # [heads, d_head]
    sizes = [attn.W_Q.shape[0], w_k.shape[0], w_v.shape[0]]
    merged = (w.permute(1, 0, 2).reshape(w.shape[1], -1), b.reshape(-1), sizes)
    if _QKV_CACHE is not None:
        _QKV_CACHE[id(attn)] = (key, merged)
    return merged


def attention(attn, x: Float[Tensor, "batch pos d_model"]) -> Float[Tensor, "batch pos d_model"]:
    """Causal multi-head (or grouped-query) attention; calls attn.hook_z on z."""
    n_batch, n_pos, d_model = x.shape
    w, b, sizes = qkv_weights(attn)
    d_head = attn.W_Q.shape[-1]
    qkv = torch.addmm(b, x.reshape(-1, d_model), w).view(n_batch, n_pos, -1, d_head)
    q, k, v = qkv.split(sizes, dim=2)  # [batch, pos, heads, d_head]
    if attn.cfg.positional_embedding_type == "rotary":
        q, k = attn.apply_rotary(q), attn.apply_rotary(k)
    if sizes[1] < sizes[0]:
        k = k.repeat_interleave(sizes[0] // sizes[1], dim=2)
        v = v.repeat_interleave(sizes[0] // sizes[2], dim=2)
    z = F.scaled_dot_product_attention(
        q.transpose(1, 2),
        k.transpose(1, 2),
        v.transpose(1, 2),
        is_causal=True,
        scale=1.0 / float(attn.attn_scale),
    ).transpose(1, 2)  # [batch, pos, head, d_head]
    z = attn.hook_z(z)
    w_o = attn.W_O.reshape(-1, d_model)  # [(head d_head), d_model]
    out = torch.addmm(attn.b_O, z.reshape(n_batch * n_pos, -1).to(w_o.dtype), w_o)
    return out.view(n_batch, n_pos, d_model)


def activation(mlp):
    return partial(F.gelu, approximate="tanh") if mlp.cfg.act_fn in TANH_GELUS else mlp.act_fn


def mlp_forward(mlp, x: Float[Tensor, "batch pos d_model"]) -> Float[Tensor, "batch pos d_model"]:
    """MLP or gated MLP, calling hook_pre, hook_pre_linear and hook_post as TransformerLens."""
    n_batch, n_pos, d_model = x.shape
    flat = x.reshape(-1, d_model)
    act = activation(mlp)

    def hidden(t: Tensor) -> Tensor:
        return t.view(n_batch, n_pos, -1)

    if is_gated_mlp(mlp):
        pre = mlp.hook_pre(hidden(flat @ mlp.W_gate))
        pre_linear = mlp.hook_pre_linear(hidden(flat @ mlp.W_in))
        post = mlp.hook_post(act(pre) * pre_linear + mlp.b_in)
    else:
        pre = mlp.hook_pre(hidden(torch.addmm(mlp.b_in, flat, mlp.W_in)))
        post = mlp.hook_post(act(pre))
    del pre  # not alive beside post and out (a hook that keeps it still has it)
    out = torch.addmm(mlp.b_out, post.reshape(n_batch * n_pos, -1), mlp.W_out)
    return out.view(n_batch, n_pos, d_model)


def run_mlp(
    block, resid: Float[Tensor, "batch pos d_model"], fused: bool = True
) -> Float[Tensor, "batch pos d_model"]:
    """The block's MLP output on a residual stream (ln2, MLP, hook_mlp_out), as
    `block.apply_mlp(block.ln2(resid))`."""
    if not (fused and can_fuse(block)):
        return block.apply_mlp(block.ln2(resid))
    return block.hook_mlp_out(mlp_forward(block.mlp, normalize(block.ln2, resid)))


def run_block(
    block, resid: Float[Tensor, "batch pos d_model"], fused: bool = True
) -> Float[Tensor, "batch pos d_model"]:
    """`block(resid)`, fused where supported (same numbers to float tolerance)."""
    if not (fused and can_fuse(block)):
        return block(resid)
    cfg = block.cfg
    resid = block.hook_resid_pre(resid)
    attn_out = block.hook_attn_out(attention(block.attn, normalize(block.ln1, resid)))
    if cfg.attn_only:
        return block.hook_resid_post(resid + attn_out)
    if cfg.parallel_attn_mlp:
        mlp_out = block.hook_mlp_out(mlp_forward(block.mlp, normalize(block.ln2, resid)))
        return block.hook_resid_post(resid + attn_out + mlp_out)
    resid_mid = block.hook_resid_mid(resid + attn_out)
    del attn_out  # not alive through the MLP, whose hidden activations are the pass's peak
    mlp_out = block.hook_mlp_out(mlp_forward(block.mlp, normalize(block.ln2, resid_mid)))
    return block.hook_resid_post(resid_mid + mlp_out)
