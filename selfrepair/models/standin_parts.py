"""The stand-in's small parts (selfrepair.models.standin): hook points, activations, norms and
the projections, each TransformerLens 3.9's arithmetic copied operation by operation."""

from __future__ import annotations

from collections.abc import Callable
from types import SimpleNamespace
from typing import Any

import einops
import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = [
    "ACTIVATIONS",
    "NORM_TYPES",
    "HookPoint",
    "LayerNorm",
    "LayerNormPre",
    "RMSNorm",
    "RMSNormPre",
    "batch_addmm",
    "simple_attn_linear",
    "standin_config",
]


def gelu_new(x: Tensor) -> Tensor:
    return 0.5 * x * (1.0 + torch.tanh(np.sqrt(2.0 / np.pi) * (x + 0.044715 * torch.pow(x, 3.0))))


def gelu_fast(x: Tensor) -> Tensor:
    return 0.5 * x * (1.0 + torch.tanh(x * 0.7978845608 * (1.0 + 0.044715 * x * x)))


def gelu_pytorch_tanh(x: Tensor) -> Tensor:
    return F.gelu(x, approximate="tanh")


def relu2(x: Tensor) -> Tensor:
    relu_applied = F.relu(x)
    return relu_applied * relu_applied


# TransformerLens' SUPPORTED_ACTIVATIONS, less the layer-norm ones (solu_ln) and xielu.
ACTIVATIONS: dict[str, Callable[..., Tensor]] = {
    "gelu_new": gelu_new,
    "gelu_fast": gelu_fast,
    "silu": F.silu,
    "relu": F.relu,
    "gelu": F.gelu,
    "gelu_pytorch_tanh": gelu_pytorch_tanh,
    "relu2": relu2,
}


def standin_config(fields: dict[str, Any], device: str, dtype: torch.dtype) -> SimpleNamespace:
    """The `cfg` the engine reads, from the processed file's config fields."""
    cfg = SimpleNamespace(**fields)
    cfg.device, cfg.dtype = device, dtype
    cfg.is_layer_norm_activation = lambda: False  # solu_ln is refused when the file is written
    return cfg


class HookPoint(nn.Module):
    """Identity whose forward hooks see, and may replace, the tensor (TransformerLens' API)."""

    def __init__(self) -> None:
        super().__init__()
        self.name: str | None = None

    def add_hook(self, hook: Callable) -> torch.utils.hooks.RemovableHandle:
        return self.register_forward_hook(lambda module, inputs, output: hook(output, hook=self))

    def layer(self) -> int:
        """The layer of a `blocks.<layer>.` hook point, as TransformerLens' HookPoint.layer."""
        if self.name is None:
            raise ValueError("Name cannot be None")
        return int(self.name.split(".")[1])

    def forward(self, x: Tensor) -> Tensor:
        return x


class _Norm(nn.Module):
    """TransformerLens' LayerNorm, LayerNormPre, RMSNorm and RMSNormPre, by `centre`,
    `weight` and `bias`."""

    centre = weight = bias = False

    def __init__(self, cfg: SimpleNamespace) -> None:
        super().__init__()
        self.cfg, self.eps = cfg, cfg.eps
        if self.weight:
            self.w = nn.Parameter(torch.ones(cfg.d_model, dtype=cfg.dtype))
        if self.bias:
            self.b = nn.Parameter(torch.zeros(cfg.d_model, dtype=cfg.dtype))
        self.hook_scale = HookPoint()
        self.hook_normalized = HookPoint()

    def forward(self, x: Tensor) -> Tensor:
        if self.cfg.dtype not in [torch.float32, torch.float64]:
            x = x.to(torch.float32)
        if self.centre:
            x = x - x.mean(-1, keepdim=True)
        scale = self.hook_scale((x.pow(2).mean(-1, keepdim=True) + self.eps).sqrt())
        x = self.hook_normalized(x / scale).to(self.cfg.dtype)
        if self.bias:
            return x * self.w + self.b
        return x * self.w if self.weight else x


class LayerNorm(_Norm):
    centre = weight = bias = True


class LayerNormPre(_Norm):
    centre = True


class RMSNorm(_Norm):
    weight = True


class RMSNormPre(_Norm):
    pass


NORM_TYPES = {"LN": LayerNorm, "LNPre": LayerNormPre, "RMS": RMSNorm, "RMSPre": RMSNormPre}


def simple_attn_linear(x: Tensor, w: Tensor, b: Tensor) -> Tensor:
    w = einops.rearrange(w, "head_index d_model d_head -> (head_index d_head) d_model")
    b_ = einops.rearrange(b, "head_index d_head -> (head_index d_head)")
    return F.linear(x, w, b_).reshape(x.shape[0], x.shape[1], b.shape[0], b.shape[1])


def batch_addmm(bias: Tensor, weight: Tensor, x: Tensor) -> Tensor:
    size_out = x.size()[:-1] + (weight.shape[-1],)
    return torch.addmm(bias, x.view(-1, x.size(-1)), weight).view(size_out)
