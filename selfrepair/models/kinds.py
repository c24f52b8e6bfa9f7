"""What kind of TransformerLens module a model part is, for TransformerLens' own modules and for
the stand-in's (selfrepair.models.standin) alike, without importing TransformerLens: a model job
that runs the stand-in never imports it (seconds per job).

A part's kind is its class name when the class is TransformerLens' or the stand-in's (they
share the names), else None: the fused blocks and the readout then fall back or refuse.
"""

from __future__ import annotations

__all__ = [
    "NORMS",
    "POST_NORM_ARCHITECTURES",
    "centres",
    "has_bias",
    "has_weight",
    "is_attention",
    "is_gated_mlp",
    "is_hook_point",
    "is_mlp",
    "is_norm",
    "kind",
]

# transformer_lens.utilities.architectures.POST_NORM_ARCHITECTURES (3.9), copied so that it is
# read without importing TransformerLens; tests/test_standin.py holds the two equal.
POST_NORM_ARCHITECTURES = frozenset({"Olmo2ForCausalLM", "Olmo3ForCausalLM"})

NORMS = ("LayerNorm", "LayerNormPre", "RMSNorm", "RMSNormPre")
_HOMES = ("transformer_lens.", "selfrepair.models.standin")


def kind(module) -> str | None:
    """The class name of a TransformerLens or stand-in module, else None."""
    cls = type(module)
    return cls.__name__ if cls.__module__.startswith(_HOMES) else None


def is_norm(module) -> bool:
    return kind(module) in NORMS


def centres(norm) -> bool:
    """LayerNorm(Pre) subtracts the mean over d_model; RMSNorm(Pre) does not."""
    return kind(norm) in ("LayerNorm", "LayerNormPre")


def has_weight(norm) -> bool:
    return kind(norm) in ("LayerNorm", "RMSNorm")


def has_bias(norm) -> bool:
    return kind(norm) == "LayerNorm"


def is_attention(module) -> bool:
    return kind(module) in ("Attention", "GroupedQueryAttention")


def is_mlp(module) -> bool:
    return kind(module) in ("MLP", "GatedMLP")


def is_gated_mlp(module) -> bool:
    return kind(module) == "GatedMLP"


def is_hook_point(module) -> bool:
    return kind(module) == "HookPoint"
