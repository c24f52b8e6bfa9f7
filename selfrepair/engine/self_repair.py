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

from collections.abc import Callable, Iterable, Iterator, Sequence
from functools import partial
from typing import TYPE_CHECKING

import numpy as np
import torch
import xarray as xr
from jaxtyping import Float, Int
from torch import Tensor
from tqdm.auto import tqdm

from selfrepair.ablations import ROWS
from selfrepair.engine.ablation import (
    AblationChunk,
    ablation_chunks,
    check_ablation,
    checked_source,
)
from selfrepair.engine.attribution import (
    RepairSums,
    component_effects,
    component_hooks,
    head_directions,
)
from selfrepair.engine.inputs import (
    TaskInputs,
    default_heads_per_pass,
    empty_head_arrays,
    heads_dataset,
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

if TYPE_CHECKING:
    from transformer_lens import HookedTransformer

__all__ = [
    "ablate_group",
    "ablated_pass",
    "chunk_directions",
    "frozen_norms",
    "head_groups",
    "measure_chunk",
    "measure_heads",
    "progress_bar",
    "pass_result",
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
    directions: Callable[[int], Tensor] | None = None,
) -> dict[str, Float[Tensor, "group batch pos"]]:
    """Replace z of each head in `heads` (one head per group entry) and finish the forward pass.

    Restarts from the clean residual stream right after the attention of `layer`, adding the
    head's change (z' - z) W_O; the stacked group shares every later block call. With freeze_ln
    every LayerNorm downstream (and the final one) divides by its clean scale instead of
    recomputing it, the remedy the paper suggests for LayerNorm self-repair. With `directions`
    (a later layer -> its heads' W_O . u, engine.attribution.head_directions) the result also
    holds "components": every component's change of direct effect ([group, batch, pos,
    component], engine.attribution), which needs cp.z of every later layer.
    """
    g, b, p = z_new.shape[:3]
    block = model.blocks[layer]
    w_o = block.attn.W_O[heads]  # [group, d_head, d_model]
    z_clean = cp.z[layer][:, :, heads].permute(2, 0, 1, 3)  # [group, batch, pos, d_head]
    # (z' - z) W_O unnamed: freed at once, not alive through every later block of the pass.
    resid = (cp.restart[layer] + torch.einsum("gbpd,gdm->gbpm", z_new - z_clean, w_o)).flatten(0, 1)

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

    mlp_parts: dict[int, Tensor] = {}
    head_parts: dict[int, Tensor] = {}

    def on_mlp(x, hook, later):
        part = stacked_dot(x) - cp.mlp_dot[later]
        sr_mlps.add_(part)
        mlp_parts[later] = part

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
    if directions is not None:
        hooks += component_hooks(model, cp, layer, g, directions, head_parts)

    sequential = restart_point(model) == "resid_mid"
    with model.hooks(fwd_hooks=hooks):
        if sequential:  # the MLP of this layer reads the ablated stream
            mlp_out = run_mlp(block, resid, fused)
            mlp_parts[layer] = stacked_dot(mlp_out) - cp.mlp_dot[layer]
            sr_mlps += mlp_parts[layer]
            resid = resid + mlp_out
            del mlp_out  # else alive through the later blocks, as above
        for later in range(layer + 1, model.cfg.n_layers):
            resid = run_block(model.blocks[later], resid, fused)

    res = pass_result(ro, cp, resid.reshape(g, b, p, -1), freeze_ln, de_clean, de_ablated)
    res["sr_heads"], res["sr_mlps"] = sr_heads / cp.scale, sr_mlps / cp.scale
    if directions is not None:
        res["components"] = component_effects(model, cp.scale, head_parts, mlp_parts, res["sr_ln"])
    return res


def pass_result(
    ro: Readout,
    cp: CleanPass,
    x: Float[Tensor, "group batch pos d_model"],
    freeze_ln: bool,
    de_clean: Float[Tensor, "group batch pos"],
    de_ablated: Float[Tensor, "group batch pos"],
) -> dict[str, Float[Tensor, "group batch pos"]]:
    """Eq. 1 and the LayerNorm part of Eq. 2 from a stacked pass's final residual stream x."""
    g, b, p = x.shape[:3]
    scale_ablated = cp.scale.expand(g, b, p) if freeze_ln else ro.scale(x)
    xu = dot(x, cp.u)
    logit_diff = (xu / scale_ablated + cp.const) - cp.logit
    return {
        "logit_diff": logit_diff,
        "de_clean": de_clean,
        "de_ablated": de_ablated,
        "self_repair": logit_diff - (de_ablated - de_clean),
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
    directions: Callable[[int], Tensor] | None = None,
) -> dict[str, Float[Tensor, "group batch pos"]]:
    """ablated_pass for the heads `group` of `layer` on one chunk, each with its ablated z."""
    z_new = chunk.z_new(layer, group).permute(2, 0, 1, 3)  # [group, batch, pos, d_head]
    res = ablated_pass(model, ro, chunk.cp, layer, group, z_new, freeze_ln, fused, directions)
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
    sums: RepairSums | None = None,
) -> None:
    """Write the clean logit and scale and every asked head's variables of one chunk into out
    (and, with sums, add every component's change of direct effect to them)."""
    sl = chunk.span
    out["logit_clean"][sl] = chunk.cp.logit.cpu().numpy()
    out["ln_scale_clean"][sl] = chunk.cp.scale.cpu().numpy()
    directions = None if sums is None else chunk_directions(model, chunk)
    for layer, groups in head_groups(by_layer, heads_per_pass):
        for group in groups:
            res = ablate_group(model, ro, chunk, layer, group, freeze_ln, fused, directions)
            if sums is not None:
                sums.add(layer, group, res, sl)
                del res["components"]
            for name, value in res.items():
                out[name][layer, group, sl] = value.cpu().numpy()
        bar.update(1)


def chunk_directions(model: HookedTransformer, chunk: AblationChunk) -> Callable[[int], Tensor]:
    """head_directions of a chunk's clean pass, each layer's computed once, when first asked."""
    cache: dict[int, Tensor] = {}

    def directions(layer: int) -> Tensor:
        if layer not in cache:
            cache[layer] = head_directions(model, chunk.cp, layer)
        return cache[layer]

    return directions


def progress_bar(total: int, desc: str, progress: bool) -> tqdm:
    """measure_heads' bar: one step per layer of each chunk, shown when progress is set."""
    return tqdm(total=total, desc=desc, unit="layer", disable=not progress, mininterval=5.0)


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
    sums: RepairSums | None = None,
    task: TaskInputs | None = None,
) -> xr.Dataset:
    """Eq. 1 and 2 of the paper for every (or the given) head, per token.

    Args:
        model: the HookedTransformer (not modified).
        tokens: [batch, pos + 1] token rows, each starting with BOS.
        ablation: a kind of selfrepair.ablations.KINDS: "resample" (z of row source[i], default
            (i + 1) mod batch), "mean" (ablation.mean_z), "zero", or a task's "corrupted".
        heads: (layer, head) pairs to ablate; None: every head.
        batch_size: rows per clean pass (default: all); bounds memory, never changes a number.
        heads_per_pass: heads stacked per ablated pass (default: default_heads_per_pass);
            bounds memory, never changes a number.
        source: resample partner of each row (default: resample_source).
        mean_include_bos: whether the mean z includes position 0.
        freeze_ln: every LayerNorm after the ablated head keeps its clean scale (so sr_ln is 0
            and the remaining self-repair is the heads' and MLPs').
        fused: run blocks with selfrepair.models.blocks' fused forward where it applies (same
            numbers to float tolerance, faster on a CPU); False: TransformerLens' modules.
        progress, desc: show a progress bar with this label.
        sums: when given (engine.attribution.RepairSums over the same rows), the same passes
            add every downstream component's change of direct effect to it (who repairs whom);
            the returned numbers do not change.
        task: a task's engine.inputs.TaskInputs (ablation "corrupted" needs it); None: text.

    Returns:
        HEAD_VARIABLES with dims layer, head, batch, pos (= tokens.shape[1] - 1), NaN for heads
        not measured, and logit_clean, ln_scale_clean with dims batch, pos.
    """
    kind = check_ablation(ablation)
    check_supported(model)
    validate_tokens(model, tokens, task)
    by_layer = normalize_heads(model, heads)
    layers = set(by_layer)
    n_rows, n_pos = tokens.shape[0], tokens.shape[1] - 1
    batch_size = batch_size or n_rows
    heads_per_pass = heads_per_pass or default_heads_per_pass(model, batch_size, n_pos)
    tokens = tokens.to(device=model.W_U.device, dtype=torch.long)
    ro = readout(model)
    source = checked_source(source, n_rows) if kind.partner_pool == ROWS else None
    out = empty_head_arrays(model, n_rows, n_pos)
    # Attribution reads the clean z of every layer after the first ablated one (mean z too).
    z_layers = layers if sums is None else set(range(min(layers), model.cfg.n_layers))
    chunks = ablation_chunks(
        model,
        tokens,
        ablation,
        z_layers,
        ro,
        restart_layers=layers,
        batch_size=batch_size,
        mean_include_bos=mean_include_bos,
        source=source,
        norm_scales=freeze_ln,
        fused=fused,
        task=task,
    )
    bar = progress_bar(-(-n_rows // batch_size) * len(layers), desc or "heads", progress)
    with torch.inference_mode(), cached_weights():
        for chunk in chunks:
            measure_chunk(
                model, ro, chunk, by_layer, heads_per_pass, out, freeze_ln, fused, bar, sums
            )
    bar.close()
    return heads_dataset(model, ro, out, ablation, source, mean_include_bos, freeze_ln)
