"""The clean forward pass, driven block by block, keeping only what self-repair needs.

The blocks are TransformerLens' own modules (so every architecture it supports computes exactly
as it does); we only choose what to keep: per-layer head outputs z, each layer's attention and MLP
output projected on the correct-token direction, and the residual stream at the point where an
ablated pass of that layer restarts.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import torch
from jaxtyping import Float, Int
from torch import Tensor

from selfrepair.models.blocks import run_block
from selfrepair.models.kinds import POST_NORM_ARCHITECTURES
from selfrepair.models.readout import Readout

if TYPE_CHECKING:
    from transformer_lens import HookedTransformer

__all__ = [
    "CleanPass",
    "NonFiniteActivation",
    "check_finite",
    "check_supported",
    "clean_hooks",
    "clean_pass",
    "dot",
    "embed",
    "restart_point",
]


class NonFiniteActivation(FloatingPointError):
    """NaN or inf in an activation; the message names the layer and the rows."""


def check_supported(model: HookedTransformer) -> None:
    """Fail at once, naming the reason, on architectures where a head's ablation is not additive."""
    cfg = model.cfg
    problems = []
    if cfg.original_architecture in POST_NORM_ARCHITECTURES:
        problems.append("post-norm blocks normalise the attention output")
    if cfg.use_normalization_before_and_after:
        problems.append("a norm after the attention output (Gemma-2 style)")
    if cfg.positional_embedding_type not in ("standard", "rotary", "alibi"):
        problems.append(f"positional embedding {cfg.positional_embedding_type!r}")
    if getattr(cfg, "output_logits_soft_cap", -1.0) and cfg.output_logits_soft_cap > 0:
        problems.append("soft-capped logits")
    if cfg.n_devices != 1:
        problems.append("models split over several devices")
    if problems:
        raise NotImplementedError(
            f"model {cfg.model_name!r} is not supported: " + "; ".join(problems) + ". "
            "Self-repair needs head outputs that add linearly to the residual stream."
        )


def embed(
    model: HookedTransformer, tokens: Int[Tensor, "batch pos"]
) -> Float[Tensor, "batch pos d_model"]:
    """Token (and absolute positional) embedding, as HookedTransformer.input_to_embed does.

    No attention mask is ever built: rows are packed text with no padding, and a tokenizer whose
    pad token equals BOS/EOS would otherwise mask document boundaries.
    """
    resid = model.hook_embed(model.embed(tokens))
    if model.cfg.positional_embedding_type == "standard":
        resid = resid + model.hook_pos_embed(model.pos_embed(tokens))
    return resid


def restart_point(model: HookedTransformer) -> str:
    """Where an ablated pass of layer L restarts: resid_mid for sequential blocks (the MLP of L
    reads the ablated stream), resid_post for parallel or attention-only blocks (it does not)."""
    cfg = model.cfg
    return "resid_post" if (cfg.parallel_attn_mlp or cfg.attn_only) else "resid_mid"


def check_finite(x: Tensor, where: str, rows: Tensor) -> None:
    """Fail naming `where` and the rows (global indices `rows`) when x holds a NaN or inf."""
    if bool(torch.isfinite(x.sum())):  # one cheap pass: any NaN or inf makes the sum non-finite
        return
    bad = ~torch.isfinite(x)
    if bad.any():
        bad_rows = rows[bad.flatten(1).any(1).nonzero().flatten().cpu()].tolist()
        raise NonFiniteActivation(
            f"NaN or inf in {where} for row(s) {bad_rows[:10]} of the token batch: check the "
            "model weights and dtype (use dtype: float32)"
        )


@dataclass
class CleanPass:
    """Per-chunk clean quantities; [batch, pos] tensors are float32 on the model's device."""

    u: Float[Tensor, "batch pos d_model"]  # correct-token directions
    const: Float[Tensor, "batch pos"]  # vocabulary-centred bias of the correct token
    scale: Float[Tensor, "batch pos"]  # final LayerNorm scale
    logit: Float[Tensor, "batch pos"]  # centred correct-token logit
    attn_dot: dict[int, Float[Tensor, "batch pos"]] = field(default_factory=dict)  # attn_out . u
    mlp_dot: dict[int, Float[Tensor, "batch pos"]] = field(default_factory=dict)  # mlp_out . u
    z: dict[int, Float[Tensor, "batch pos head d_head"]] = field(default_factory=dict)
    restart: dict[int, Float[Tensor, "batch pos d_model"]] = field(default_factory=dict)
    embed_dot: Float[Tensor, "batch pos"] | None = None  # token embedding . u
    pos_embed_dot: Float[Tensor, "batch pos"] | None = None  # positional embedding . u
    final: Float[Tensor, "batch pos d_model"] | None = None  # final residual (embeddings=True)
    norm_scale: dict[str, Float[Tensor, "batch pos 1"]] = field(default_factory=dict)  # by hook


def dot(x: Float[Tensor, "... d_model"], u: Float[Tensor, "... d_model"]) -> Float[Tensor, ...]:
    """x . u in float32 (u broadcasts over leading stacked-head dimensions)."""
    return torch.einsum("...m,...m->...", x.float(), u)


def clean_hooks(
    model: HookedTransformer,
    cp: CleanPass,
    z_layers: set[int],
    restart_layers: set[int],
    embeddings: bool,
    norm_scales: bool,
) -> list[tuple[str, object]]:
    """Hooks that fill cp during a clean pass: every layer's attention and MLP output . cp.u,
    z of z_layers, the restart residual of restart_layers, and optionally the embeddings' . cp.u
    and every block norm's scale."""
    u = cp.u
    point = restart_point(model)
    hooks = []
    for layer in range(model.cfg.n_layers):
        prefix = f"blocks.{layer}"

        def keep_attn(x, hook, layer=layer):
            cp.attn_dot[layer] = dot(x, u)

        def keep_mlp(x, hook, layer=layer):
            cp.mlp_dot[layer] = dot(x, u)

        hooks.append((f"{prefix}.hook_attn_out", keep_attn))
        if not model.cfg.attn_only:
            hooks.append((f"{prefix}.hook_mlp_out", keep_mlp))
        if layer in z_layers:

            def keep_z(x, hook, layer=layer):
                cp.z[layer] = x

            hooks.append((f"{prefix}.attn.hook_z", keep_z))
        if layer in restart_layers:

            def keep_restart(x, hook, layer=layer):
                cp.restart[layer] = x

            hooks.append((f"{prefix}.hook_{point}", keep_restart))

    if embeddings:

        def keep_embed(x, hook):
            cp.embed_dot = dot(x, u)

        def keep_pos_embed(x, hook):
            cp.pos_embed_dot = dot(x, u)

        hooks.append(("hook_embed", keep_embed))
        if model.cfg.positional_embedding_type == "standard":
            hooks.append(("hook_pos_embed", keep_pos_embed))

    if norm_scales and model.cfg.normalization_type is not None:

        def keep_scale(x, hook):
            cp.norm_scale[hook.name] = x

        for layer in range(model.cfg.n_layers):
            hooks.append((f"blocks.{layer}.ln1.hook_scale", keep_scale))
            if not model.cfg.attn_only:
                hooks.append((f"blocks.{layer}.ln2.hook_scale", keep_scale))
    return hooks


def clean_pass(
    model: HookedTransformer,
    tokens: Int[Tensor, "batch pos_plus_1"],
    ro: Readout,
    z_layers: set[int],
    restart_layers: set[int],
    rows: Tensor | None = None,
    embeddings: bool = False,
    norm_scales: bool = False,
    fused: bool = True,
    counter: Int[Tensor, "batch pos"] | None = None,
) -> CleanPass:
    """Run the model on tokens[:, :-1] (the last token is only a target) and keep what is asked.

    Args:
        model: the HookedTransformer (not modified).
        tokens: [batch, pos + 1] token ids.
        ro: the model's readout (models.readout.readout).
        z_layers: layers whose hook_z is kept.
        restart_layers: layers whose restart residual (restart_point) is kept.
        rows: global row indices of the batch, only used to name rows in errors.
        embeddings: also keep the embeddings' projections and the final residual (clean cache).
        norm_scales: also keep every block's ln1/ln2 scale (for frozen-LayerNorm ablations).
        fused: run the blocks with selfrepair.models.blocks' fused forward where it applies.
        counter: a counterfactual token per predicted position (metric logit_diff: u is the
            answer's direction minus the counterfactual's); None: the correct token's logit.
    """
    if rows is None:
        rows = torch.arange(tokens.shape[0])
    inp = tokens[:, :-1]
    u, const = ro.directions(tokens[:, 1:], counter)
    cp = CleanPass(u=u, const=const, scale=None, logit=None)  # type: ignore[arg-type]
    hooks = clean_hooks(model, cp, z_layers, restart_layers, embeddings, norm_scales)
    with torch.no_grad(), model.hooks(fwd_hooks=hooks):
        resid = embed(model, inp)
        check_finite(resid, "the embedding", rows)
        for layer, block in enumerate(model.blocks):
            resid = run_block(block, resid, fused)
            check_finite(resid, f"the residual stream after layer {layer}", rows)
    if embeddings:
        cp.final = resid
    cp.scale = ro.scale(resid)
    cp.logit = dot(resid, u) / cp.scale + const
    return cp
