"""A torch-only stand-in for a processed HookedTransformer, so that a model job need not import
TransformerLens (which imports transformers and datasets: seconds per job).

It holds the same parameters and buffers under the same names (a HookedTransformer's
`state_dict` loads into it) and copies TransformerLens 3.9's unfused arithmetic, operation by
operation, for the architectures the fused blocks run (models.blocks.unsupported_reason): pre-norm
blocks of LayerNorm(Pre) or RMSNorm(Pre), global causal attention (grouped-query too) with
standard or rotary positions, MLP or gated MLP; sequential, parallel or attention-only. So
`block(resid)`, `block.apply_mlp(block.ln2(resid))`, `model.unembed(model.ln_final(x))` and the
hook points give the same bits as TransformerLens' modules (tests/test_standin.py). Hooks follow
TransformerLens' convention: `model.hooks(fwd_hooks=[(name or filter, fn)])`, `fn(x, hook)`
returning a replacement or None, `hook.name`. The processed file it is built from:
selfrepair.models.processed.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from types import SimpleNamespace

import einops
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from selfrepair.models.standin_parts import (
    ACTIVATIONS,
    NORM_TYPES,
    HookPoint,
    batch_addmm,
    simple_attn_linear,
    standin_config,
)

__all__ = ["HookPoint", "StandIn", "standin_config"]


class Attention(nn.Module):
    """TransformerLens' global causal attention (standard or rotary positions)."""

    def __init__(self, cfg: SimpleNamespace, attn_scale: float) -> None:
        super().__init__()
        self.cfg, self.attn_scale = cfg, attn_scale
        self.attn_type, self._attention_dir_override = "global", None
        n_kv = self.n_kv_heads()
        shape = (cfg.n_heads, cfg.d_model, cfg.d_head)
        kv_shape = (n_kv, cfg.d_model, cfg.d_head)
        self.W_Q = nn.Parameter(torch.empty(shape, dtype=cfg.dtype))
        self.W_O = nn.Parameter(torch.empty(cfg.n_heads, cfg.d_head, cfg.d_model, dtype=cfg.dtype))
        self.b_Q = nn.Parameter(torch.zeros(cfg.n_heads, cfg.d_head, dtype=cfg.dtype))
        self.b_O = nn.Parameter(torch.zeros(cfg.d_model, dtype=cfg.dtype))
        self._kv_parameters(kv_shape)
        self.register_buffer("mask", torch.empty((0, 0), dtype=torch.bool))
        self.register_buffer("IGNORE", torch.tensor(-torch.inf))
        for name in ("k", "q", "v", "z", "attn_scores", "pattern", "result"):
            setattr(self, f"hook_{name}", HookPoint())
        if cfg.positional_embedding_type == "rotary":
            self.hook_rot_k, self.hook_rot_q = HookPoint(), HookPoint()
            rows = min(cfg.n_ctx, 2048)  # TransformerLens' initial rotary cache
            self.register_buffer("rotary_sin", torch.empty(rows, cfg.rotary_dim, dtype=cfg.dtype))
            self.register_buffer("rotary_cos", torch.empty(rows, cfg.rotary_dim, dtype=cfg.dtype))

    def n_kv_heads(self) -> int:
        return self.cfg.n_heads

    def _kv_parameters(self, shape: tuple[int, int, int]) -> None:
        self.W_K = nn.Parameter(torch.empty(shape, dtype=self.cfg.dtype))
        self.W_V = nn.Parameter(torch.empty(shape, dtype=self.cfg.dtype))
        self.b_K = nn.Parameter(torch.zeros(shape[0], shape[2], dtype=self.cfg.dtype))
        self.b_V = nn.Parameter(torch.zeros(shape[0], shape[2], dtype=self.cfg.dtype))

    def keys_values(self, k_in: Tensor, v_in: Tensor) -> tuple[Tensor, Tensor]:
        k = self.hook_k(simple_attn_linear(k_in, self.W_K, self.b_K))
        return k, self.hook_v(simple_attn_linear(v_in, self.W_V, self.b_V))

    def expand(self, x: Tensor) -> Tensor:
        """K or V per query head (grouped-query attention repeats them)."""
        return x

    def rotate_every_two(self, x: Tensor) -> Tensor:
        rot_x = x.clone()
        if self.cfg.rotary_adjacent_pairs:
            rot_x[..., ::2] = -x[..., 1::2]
            rot_x[..., 1::2] = x[..., ::2]
        else:
            n = x.size(-1) // 2
            rot_x[..., :n] = -x[..., n:]
            rot_x[..., n:] = x[..., :n]
        return rot_x

    def apply_rotary(self, x: Tensor) -> Tensor:
        x_pos = x.size(1)
        if x_pos > self.rotary_cos.shape[0]:
            raise ValueError(
                f"{x_pos} positions exceed the processed file's rotary table "
                f"({self.rotary_cos.shape[0]}): lower data.seq_len"
            )
        x_rot, x_pass = x[..., : self.cfg.rotary_dim], x[..., self.cfg.rotary_dim :]
        x_flip = self.rotate_every_two(x_rot)
        cos = self.rotary_cos[None, 0:x_pos, None, :]
        sin = self.rotary_sin[None, 0:x_pos, None, :]
        return torch.cat([x_rot * cos + x_flip * sin, x_pass], dim=-1)

    def forward(self, query_input: Tensor, key_input: Tensor, value_input: Tensor) -> Tensor:
        q = self.hook_q(simple_attn_linear(query_input, self.W_Q, self.b_Q))
        k, v = self.keys_values(key_input, value_input)
        if self.cfg.positional_embedding_type == "rotary":
            q = self.hook_rot_q(self.apply_rotary(q))
            k = self.hook_rot_k(self.apply_rotary(k))
        q_ = einops.rearrange(q, "b q h d -> b h q d")
        k_ = einops.rearrange(self.expand(k), "b k h d -> b h d k")
        scores = q_ @ k_ / self.attn_scale
        n_query, n_key = scores.size(-2), scores.size(-1)
        query_pos = torch.arange(0, n_query, device=scores.device)
        key_pos = torch.arange(n_key, device=scores.device)
        mask = (key_pos[None, :] <= query_pos[:, None])[None, None, :, :]
        scores = self.hook_attn_scores(torch.where(mask, scores, self.IGNORE.to(mask.device)))
        pattern = F.softmax(scores, dim=-1)
        pattern = torch.where(torch.isnan(pattern), torch.zeros_like(pattern), pattern)
        pattern = self.hook_pattern(pattern).to(device=v.device, dtype=v.dtype)
        v_ = einops.rearrange(self.expand(v), "b k h d -> b h k d")
        z = self.hook_z(einops.rearrange(pattern @ v_, "b h q d -> b q h d"))
        w = einops.rearrange(self.W_O, "h d m -> m (h d)").contiguous()
        if z.dtype != w.dtype:
            z = z.to(w.dtype)
        z = z.reshape(z.shape[0], z.shape[1], self.cfg.d_head * self.cfg.n_heads)
        return F.linear(z, w, self.b_O)


class GroupedQueryAttention(Attention):
    """Keys and values of n_key_value_heads (`_W_K`, `_W_V`, `_b_K`, `_b_V`), repeated per
    query head after the projection, as TransformerLens computes them."""

    def n_kv_heads(self) -> int:
        return self.cfg.n_key_value_heads

    def _kv_parameters(self, shape: tuple[int, int, int]) -> None:
        self._W_K = nn.Parameter(torch.empty(shape, dtype=self.cfg.dtype))
        self._W_V = nn.Parameter(torch.empty(shape, dtype=self.cfg.dtype))
        self._b_K = nn.Parameter(torch.zeros(shape[0], shape[2], dtype=self.cfg.dtype))
        self._b_V = nn.Parameter(torch.zeros(shape[0], shape[2], dtype=self.cfg.dtype))

    def _repeat(self, x: Tensor) -> Tensor:
        return torch.repeat_interleave(x, dim=0, repeats=self.cfg.n_heads // self.n_kv_heads())

    W_K = property(lambda self: self._repeat(self._W_K))
    W_V = property(lambda self: self._repeat(self._W_V))
    b_K = property(lambda self: self._repeat(self._b_K))
    b_V = property(lambda self: self._repeat(self._b_V))

    def keys_values(self, k_in: Tensor, v_in: Tensor) -> tuple[Tensor, Tensor]:
        k = self.hook_k(simple_attn_linear(k_in, self._W_K, self._b_K))
        return k, self.hook_v(simple_attn_linear(v_in, self._W_V, self._b_V))

    def expand(self, x: Tensor) -> Tensor:
        return torch.repeat_interleave(x, dim=2, repeats=self.cfg.n_heads // self.n_kv_heads())


class MLP(nn.Module):
    def __init__(self, cfg: SimpleNamespace) -> None:
        super().__init__()
        self.cfg, self.d_mlp, self.act_fn = cfg, cfg.d_mlp, ACTIVATIONS[cfg.act_fn]
        self.W_in = nn.Parameter(torch.empty(cfg.d_model, cfg.d_mlp, dtype=cfg.dtype))
        self.b_in = nn.Parameter(torch.zeros(cfg.d_mlp, dtype=cfg.dtype))
        self.W_out = nn.Parameter(torch.empty(cfg.d_mlp, cfg.d_model, dtype=cfg.dtype))
        self.b_out = nn.Parameter(torch.zeros(cfg.d_model, dtype=cfg.dtype))
        self.hook_pre, self.hook_post = HookPoint(), HookPoint()

    def forward(self, x: Tensor) -> Tensor:
        pre_act = self.hook_pre(batch_addmm(self.b_in, self.W_in, x))
        return batch_addmm(self.b_out, self.W_out, self.hook_post(self.act_fn(pre_act)))


class GatedMLP(MLP):
    def __init__(self, cfg: SimpleNamespace) -> None:
        super().__init__(cfg)
        self.W_gate = nn.Parameter(torch.empty(cfg.d_model, cfg.d_mlp, dtype=cfg.dtype))
        self.hook_pre_linear = HookPoint()

    def forward(self, x: Tensor) -> Tensor:
        pre_act = self.hook_pre(F.linear(x, self.W_gate.T.contiguous()))
        pre_linear = self.hook_pre_linear(F.linear(x, self.W_in.T.contiguous()))
        post_act = self.hook_post((self.act_fn(pre_act) * pre_linear) + self.b_in)
        return F.linear(post_act, self.W_out.T.contiguous(), self.b_out)


class TransformerBlock(nn.Module):
    """A pre-norm block: sequential, parallel (attention and MLP read the same stream) or
    attention-only, with TransformerLens' hook points."""

    def __init__(self, cfg: SimpleNamespace, attn_scale: float) -> None:
        super().__init__()
        self.cfg = cfg
        norm = NORM_TYPES[cfg.normalization_type]
        self.ln1 = norm(cfg)
        attention = Attention if cfg.n_key_value_heads is None else GroupedQueryAttention
        self.attn = attention(cfg, attn_scale)
        if not cfg.attn_only:
            self.ln2 = norm(cfg)
            self.mlp = (GatedMLP if cfg.gated_mlp else MLP)(cfg)
        names = ["attn_in", "q_input", "k_input", "v_input", "mlp_in", "attn_out", "mlp_out"]
        names += ["resid_pre", "resid_post"]
        if not cfg.attn_only and not cfg.parallel_attn_mlp:
            names.append("resid_mid")
        for name in names:
            setattr(self, f"hook_{name}", HookPoint())

    def forward(self, resid_pre: Tensor) -> Tensor:
        resid_pre = self.hook_resid_pre(resid_pre)
        # ln1 thrice and `+ 0.0`, as TransformerLens (hooks on ln1 fire three times)
        attn_out = self.attn(
            query_input=self.ln1(resid_pre) + 0.0,
            key_input=self.ln1(resid_pre) + 0.0,
            value_input=self.ln1(resid_pre),
        )
        attn_out = self.hook_attn_out(attn_out)
        if not self.cfg.attn_only and not self.cfg.parallel_attn_mlp:
            resid_mid = self.hook_resid_mid(resid_pre + attn_out)
            mlp_out = self.apply_mlp(self.ln2(resid_mid))
            return self.hook_resid_post(resid_mid + mlp_out)
        if self.cfg.parallel_attn_mlp:
            mlp_out = self.apply_mlp(self.ln2(resid_pre))
            return self.hook_resid_post(resid_pre + attn_out + mlp_out)
        return self.hook_resid_post(resid_pre + attn_out)

    def apply_mlp(self, normalized_resid: Tensor) -> Tensor:
        return self.hook_mlp_out(self.mlp(normalized_resid))


class Embed(nn.Module):
    def __init__(self, cfg: SimpleNamespace) -> None:
        super().__init__()
        self.W_E = nn.Parameter(torch.empty(cfg.d_vocab, cfg.d_model, dtype=cfg.dtype))

    def forward(self, tokens: Tensor) -> Tensor:
        return self.W_E[tokens, :]


class PosEmbed(nn.Module):
    def __init__(self, cfg: SimpleNamespace) -> None:
        super().__init__()
        self.W_pos = nn.Parameter(torch.empty(cfg.n_ctx, cfg.d_model, dtype=cfg.dtype))

    def forward(self, tokens: Tensor) -> Tensor:
        pos_embed = self.W_pos[0 : tokens.size(-1), :]
        return einops.repeat(pos_embed, "p m -> b p m", b=tokens.size(0)).clone()


class Unembed(nn.Module):
    def __init__(self, cfg: SimpleNamespace) -> None:
        super().__init__()
        self.W_U = nn.Parameter(torch.empty(cfg.d_model, cfg.d_vocab_out, dtype=cfg.dtype))
        self.b_U = nn.Parameter(torch.zeros(cfg.d_vocab_out, dtype=cfg.dtype))
        self.hook_in, self.hook_out = HookPoint(), HookPoint()

    def forward(self, residual: Tensor) -> Tensor:
        residual = self.hook_in(residual)
        return self.hook_out(F.linear(residual, self.W_U.T.contiguous(), self.b_U))


class StandIn(nn.Module):
    """A processed model's embeddings, blocks, final norm and unembedding, with the hook points
    and attributes the engine reads of a HookedTransformer.

    Args:
        cfg: standin_config of the processed file's fields.
    """

    def __init__(self, cfg: SimpleNamespace) -> None:
        super().__init__()
        self.cfg = cfg
        self.embed, self.hook_embed = Embed(cfg), HookPoint()
        if cfg.positional_embedding_type == "standard":
            self.pos_embed, self.hook_pos_embed = PosEmbed(cfg), HookPoint()
        scales = cfg.attn_scales
        self.blocks = nn.ModuleList(TransformerBlock(cfg, scales[i]) for i in range(cfg.n_layers))
        self.ln_final = NORM_TYPES[cfg.normalization_type](cfg)
        self.unembed = Unembed(cfg)
        self.mod_dict = {}
        for name, module in self.named_modules():
            if isinstance(module, HookPoint):
                module.name = name
                self.mod_dict[name] = module

    W_U = property(lambda self: self.unembed.W_U)
    b_U = property(lambda self: self.unembed.b_U)
    W_E = property(lambda self: self.embed.W_E)

    @contextlib.contextmanager
    def hooks(self, fwd_hooks=(), bwd_hooks=(), reset_hooks_end: bool = True) -> Iterator:
        """Forward hooks while inside, as HookedTransformer.hooks: (name or name filter, fn)."""
        if bwd_hooks:
            raise NotImplementedError("the stand-in has no backward hooks: use TransformerLens")
        handles = []
        try:
            for name, fn in fwd_hooks:
                points = (
                    [self.mod_dict[name]]
                    if isinstance(name, str)
                    else [p for n, p in self.mod_dict.items() if name(n)]
                )
                handles += [point.add_hook(fn) for point in points]
            yield self
        finally:
            if reset_hooks_end:
                for handle in handles:
                    handle.remove()

    def forward(
        self, input: Tensor, start_at_layer: int | None = None, stop_at_layer: int | None = None
    ) -> Tensor:
        """Logits [batch, pos, d_vocab] (HookedTransformer's forward without masks or caches);
        as there, `start_at_layer` takes a residual stream instead of tokens and runs the blocks
        from that layer on, and `stop_at_layer` returns the residual stream before that block
        (both as Python slices of the blocks)."""
        if start_at_layer is None:
            residual = self.hook_embed(self.embed(input))
            if self.cfg.positional_embedding_type == "standard":
                residual = residual + self.hook_pos_embed(self.pos_embed(input))
        else:
            residual = input
        for block in list(self.blocks)[start_at_layer or 0 : stop_at_layer]:
            residual = block(residual)
        if stop_at_layer is not None:
            return residual
        return self.unembed(self.ln_final(residual))

    def run_with_hooks(self, tokens: Tensor, fwd_hooks=()) -> Tensor:
        with self.hooks(fwd_hooks=fwd_hooks):
            return self(tokens)
