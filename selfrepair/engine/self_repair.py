"""Per-head self-repair under resample, mean and zero ablation (paper Eq. 1 and 2).

One clean pass per batch of rows; then, per layer, the heads of that layer are ablated together
(stacked along the batch dimension) in passes that restart from the cached clean residual stream
right after the ablated attention layer, so neither the embedding, the layers below, nor the
attention of the ablated layer is recomputed, and no full unembedding is ever done.

For ablated head h of layer l, with clean final-LN scale s, ablated scale s', correct-token
direction u (see readout.py) and final residuals x (clean) and x' (ablated):

    logit_diff  = (x'.u/s' + c) - (x.u/s + c)
    de_clean    = z_h W_O[h] . u / s             de_ablated = z'_h W_O[h] . u / s
    self_repair = logit_diff - (de_ablated - de_clean)                              (Eq. 1)
    sr_heads    = sum over layers > l of (attn_out' - attn_out) . u / s
    sr_mlps     = sum over MLP layers downstream of h of (mlp_out' - mlp_out) . u / s
    sr_ln       = x'.u (1/s' - 1/s)                                                 (Eq. 2)

Each part is computed on its own, so sr_heads + sr_mlps + sr_ln == self_repair is a real check.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from functools import partial
from typing import TYPE_CHECKING

import numpy as np
import torch
import xarray as xr
from jaxtyping import Float, Int
from torch import Tensor
from tqdm.auto import tqdm

from selfrepair.engine.ablation import (
    AblationChunk,
    ablation_chunks,
    check_ablation,
    checked_source,
    mean_z,
    resample_source,
)
from selfrepair.engine.inputs import (
    CPU_PASS_BYTES,
    default_heads_per_pass,
    grid_coords,
    normalize_heads,
    validate_tokens,
)
from selfrepair.models.blocks import cached_weights, run_block, run_mlp
from selfrepair.models.forward import (
    CleanPass,
    check_finite,
    check_supported,
    dot,
    restart_point,
)
from selfrepair.models.readout import Readout, readout
from selfrepair.variables import ABLATIONS, HEAD_VARIABLES

if TYPE_CHECKING:
    from transformer_lens import HookedTransformer

__all__ = [
    "ABLATIONS",
    "CPU_PASS_BYTES",
    "HEAD_VARIABLES",
    "ablate_group",
    "ablated_pass",
    "default_heads_per_pass",
    "empty_head_arrays",
    "frozen_norms",
    "head_groups",
    "heads_dataset",
    "mean_z",
    "measure_chunk",
    "measure_heads",
    "progress_bar",
    "normalize_heads",
    "resample_source",
    "validate_tokens",
]


def ablated_pass(
    model: HookedTransformer,
    ro: Readout,
    cp: CleanPass,
    layer: int,
    heads: list[int],
    z_new: Float[Tensor, "group batch pos d_head"],
    freeze_ln: bool = False,
    fused: bool = True,
) -> dict[str, Float[Tensor, "group batch pos"]]:
    """Replace z of each head in `heads` (one head per group entry) and finish the forward pass.

    Restarts from the clean residual stream right after the attention of `layer`, adding the
    head's change (z' - z) W_O; the stacked group shares every later block call. With freeze_ln
    every LayerNorm downstream (and the final one) divides by its clean scale instead of
    recomputing it, the remedy the paper suggests for LayerNorm self-repair.
    """
    g, b, p = z_new.shape[:3]
    block = model.blocks[layer]
    w_o = block.attn.W_O[heads]  # [group, d_head, d_model]
    z_clean = cp.z[layer][:, :, heads].permute(2, 0, 1, 3)  # [group, batch, pos, d_head]
    delta = torch.einsum("gbpd,gdm->gbpm", z_new - z_clean, w_o)
    resid = (cp.restart[layer].unsqueeze(0) + delta).reshape(g * b, p, -1)

    # Direct effects of the ablated head through W_O . u, never through [.., d_model] per head.
    v = torch.einsum("gdm,bpm->gbpd", w_o.float(), cp.u)  # [group, batch, pos, d_head]
    de_clean = torch.einsum("gbpd,gbpd->gbp", z_clean.float(), v) / cp.scale
    de_ablated = torch.einsum("gbpd,gbpd->gbp", z_new.float(), v) / cp.scale

    sr_heads = torch.zeros(g, b, p, device=cp.u.device)
    sr_mlps = torch.zeros(g, b, p, device=cp.u.device)

    def stacked_dot(x):
        return dot(x.reshape(g, b, p, -1), cp.u)

    def on_attn(x, hook, later):
        sr_heads.add_(stacked_dot(x) - cp.attn_dot[later])

    def on_mlp(x, hook, later):
        sr_mlps.add_(stacked_dot(x) - cp.mlp_dot[later])

    def clean_scale(x, hook, key):
        return cp.norm_scale[key].repeat(g, 1, 1)

    hooks = []
    for later in range(layer + 1, model.cfg.n_layers):
        prefix = f"blocks.{later}"
        hooks.append((f"{prefix}.hook_attn_out", partial(on_attn, later=later)))
        if not model.cfg.attn_only:
            hooks.append((f"{prefix}.hook_mlp_out", partial(on_mlp, later=later)))
    if freeze_ln:
        hooks += [(key, partial(clean_scale, key=key)) for key in frozen_norms(model, layer)]

    sequential = restart_point(model) == "resid_mid"
    with model.hooks(fwd_hooks=hooks):
        if sequential:  # the MLP of this layer reads the ablated stream
            mlp_out = run_mlp(block, resid, fused)
            sr_mlps += stacked_dot(mlp_out) - cp.mlp_dot[layer]
            resid = resid + mlp_out
        for later in range(layer + 1, model.cfg.n_layers):
            resid = run_block(model.blocks[later], resid, fused)

    x = resid.reshape(g, b, p, -1)
    scale_ablated = cp.scale.expand(g, b, p) if freeze_ln else ro.scale(x)
    xu = dot(x, cp.u)
    logit_diff = (xu / scale_ablated + cp.const) - cp.logit
    return {
        "logit_diff": logit_diff,
        "de_clean": de_clean,
        "de_ablated": de_ablated,
        "self_repair": logit_diff - (de_ablated - de_clean),
        "sr_heads": sr_heads / cp.scale,
        "sr_mlps": sr_mlps / cp.scale,
        "sr_ln": xu * (1.0 / scale_ablated - 1.0 / cp.scale),
        "ln_scale_ablated": scale_ablated,
    }


def frozen_norms(model: HookedTransformer, layer: int) -> list[str]:
    """hook_scale names of the norms an ablated pass of `layer` recomputes: ln2 of `layer` in a
    sequential block, ln1 and ln2 of every later block."""
    if model.cfg.normalization_type is None:
        return []
    names = [f"blocks.{layer}.ln2.hook_scale"] if restart_point(model) == "resid_mid" else []
    for later in range(layer + 1, model.cfg.n_layers):
        names.append(f"blocks.{later}.ln1.hook_scale")
        if not model.cfg.attn_only:
            names.append(f"blocks.{later}.ln2.hook_scale")
    return names


def empty_head_arrays(model: HookedTransformer, n_rows: int, n_pos: int) -> dict[str, np.ndarray]:
    """NaN-filled float32 (layer, head, batch, pos) arrays of HEAD_VARIABLES (NaN: not measured)
    and (batch, pos) arrays of the clean logit and final-LN scale."""
    shape = (model.cfg.n_layers, model.cfg.n_heads, n_rows, n_pos)
    out = {v: np.full(shape, np.nan, np.float32) for v in HEAD_VARIABLES}
    out["logit_clean"] = np.empty((n_rows, n_pos), np.float32)
    out["ln_scale_clean"] = np.empty((n_rows, n_pos), np.float32)
    return out


def head_groups(
    by_layer: dict[int, list[int]], heads_per_pass: int
) -> Iterator[tuple[int, list[list[int]]]]:
    """Per layer, its heads in groups of at most heads_per_pass (the heads stacked in one pass)."""
    for layer, layer_heads in by_layer.items():
        yield (
            layer,
            [
                layer_heads[i : i + heads_per_pass]
                for i in range(0, len(layer_heads), heads_per_pass)
            ],
        )


def ablate_group(
    model: HookedTransformer,
    ro: Readout,
    chunk: AblationChunk,
    layer: int,
    group: list[int],
    freeze_ln: bool,
    fused: bool,
) -> dict[str, Float[Tensor, "group batch pos"]]:
    """ablated_pass for the heads `group` of `layer` on one chunk, each with its ablated z."""
    z_new = chunk.z_new(layer, group).permute(2, 0, 1, 3)  # [group, batch, pos, d_head]
    res = ablated_pass(model, ro, chunk.cp, layer, group, z_new, freeze_ln, fused)
    check_finite(res["logit_diff"].transpose(0, 1), f"ablated layer {layer}", chunk.rows)
    return res


def measure_chunk(
    model: HookedTransformer,
    ro: Readout,
    chunk: AblationChunk,
    by_layer: dict[int, list[int]],
    heads_per_pass: int,
    out: dict[str, np.ndarray],
    freeze_ln: bool,
    fused: bool,
    bar: tqdm,
) -> None:
    """Write the clean logit and scale and every asked head's variables of one chunk into out."""
    sl = chunk.span
    out["logit_clean"][sl] = chunk.cp.logit.cpu().numpy()
    out["ln_scale_clean"][sl] = chunk.cp.scale.cpu().numpy()
    for layer, groups in head_groups(by_layer, heads_per_pass):
        for group in groups:
            res = ablate_group(model, ro, chunk, layer, group, freeze_ln, fused)
            for name, value in res.items():
                out[name][layer, group, sl] = value.cpu().numpy()
        bar.update(1)


def progress_bar(total: int, desc: str, progress: bool) -> tqdm:
    """measure_heads' bar: one step per layer of each chunk, shown when progress is set."""
    return tqdm(total=total, desc=desc, unit="layer", disable=not progress, mininterval=5.0)


def heads_dataset(
    model: HookedTransformer,
    ro: Readout,
    out: dict[str, np.ndarray],
    ablation: str,
    source: Tensor | None,
    mean_include_bos: bool,
    freeze_ln: bool,
) -> xr.Dataset:
    """measure_heads' arrays as a Dataset with its coordinates and attributes."""
    n_layers, n_heads, n_rows, n_pos = out[HEAD_VARIABLES[0]].shape
    dims4 = ("layer", "head", "batch", "pos")
    data = {name: (dims4 if arr.ndim == 4 else ("batch", "pos"), arr) for name, arr in out.items()}
    coords = grid_coords(model, n_rows, n_pos)
    if ablation == "resample":
        coords["resample_source"] = ("batch", source.numpy())
    attrs = {
        "ablation": ablation,
        "model": model.cfg.model_name,
        "n_layers": n_layers,
        "n_heads": n_heads,
        "parallel_attn_mlp": int(bool(model.cfg.parallel_attn_mlp)),
        "final_norm": "LayerNorm" if ro.centre else "RMSNorm",
        "mean_include_bos": int(mean_include_bos),
        "freeze_ln": int(freeze_ln),
        "logits": "centred over the vocabulary; direct effects use the clean final-LN scale",
    }
    return xr.Dataset(data, coords=coords, attrs=attrs)


def measure_heads(
    model: HookedTransformer,
    tokens: Int[Tensor, "batch pos"],
    ablation: str = "resample",
    heads: Iterable[Sequence[int]] | None = None,
    *,
    batch_size: int | None = None,
    heads_per_pass: int | None = None,
    source: Int[Tensor, " batch"] | None = None,
    mean_include_bos: bool = True,
    freeze_ln: bool = False,
    fused: bool = True,
    progress: bool = False,
    desc: str | None = None,
) -> xr.Dataset:
    """Eq. 1 and 2 of the paper for every (or the given) head, per token.

    Args:
        model: the HookedTransformer (not modified).
        tokens: [batch, pos + 1] token rows, each starting with BOS.
        ablation: "resample" (z of row source[i], default (i + 1) mod batch, same position),
            "mean" (mean z over all rows and positions of tokens) or "zero".
        heads: (layer, head) pairs to ablate; None: every head.
        batch_size: rows per clean pass (default: all); bounds memory, never changes a number.
        heads_per_pass: heads stacked per ablated pass (default: default_heads_per_pass);
            bounds memory, never changes a number.
        source: resample partner of each row (default: resample_source).
        mean_include_bos: whether the mean z includes position 0.
        freeze_ln: every LayerNorm after the ablated head keeps its clean scale (so sr_ln is 0
            and the remaining self-repair is the heads' and MLPs').
        fused: run blocks with selfrepair.models.blocks' fused forward where it applies (same
            numbers to float tolerance, several times faster on a CPU); False runs
            TransformerLens' block modules.
        progress, desc: show a progress bar with this label.

    Returns:
        HEAD_VARIABLES with dims layer, head, batch, pos (= tokens.shape[1] - 1), NaN for heads
        not measured, and logit_clean, ln_scale_clean with dims batch, pos.
    """
    check_ablation(ablation)
    check_supported(model)
    validate_tokens(model, tokens)
    by_layer = normalize_heads(model, heads)
    layers = set(by_layer)
    n_rows, n_pos = tokens.shape[0], tokens.shape[1] - 1
    batch_size = batch_size or n_rows
    heads_per_pass = heads_per_pass or default_heads_per_pass(model, batch_size, n_pos)
    tokens = tokens.to(device=model.W_U.device, dtype=torch.long)
    ro = readout(model)
    source = checked_source(source, n_rows) if ablation == "resample" else None
    z_mean = (
        mean_z(model, tokens, layers, batch_size, mean_include_bos, fused)
        if ablation == "mean"
        else None
    )
    out = empty_head_arrays(model, n_rows, n_pos)
    chunks = ablation_chunks(
        model,
        tokens,
        ablation,
        layers,
        ro,
        batch_size=batch_size,
        source=source,
        z_mean=z_mean,
        norm_scales=freeze_ln,
        fused=fused,
    )
    bar = progress_bar(-(-n_rows // batch_size) * len(layers), desc or "heads", progress)
    with torch.inference_mode(), cached_weights():
        for chunk in chunks:
            measure_chunk(model, ro, chunk, by_layer, heads_per_pass, out, freeze_ln, fused, bar)
    bar.close()
    return heads_dataset(model, ro, out, ablation, source, mean_include_bos, freeze_ln)
