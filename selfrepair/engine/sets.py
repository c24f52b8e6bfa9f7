"""Joint ablation of a set of heads: every head of the set replaced in one pass.

Backup heads show when a whole part of a circuit is removed (Wang et al. ablate IOI's three name
movers together). What this pass gives per head is its change of direct effect with the set gone
(the joint-set direct-effect rise, analysis.tasks.joint_de_rise; exactly 0 for heads at or below
the set's first layer). That is not CoAx's score (Gong 2026, CoAblation.conditional_compensation
in src/curvgraph/coablation.py: how much a head's own ablation effect grows once the set is gone,
a Fisher-weighted centred energy over the vocabulary); its logit-difference form takes one pass
per candidate with the set and the candidate ablated, which this function runs when given those
sets (engine.conditional). The set's heads may lie in different layers: the pass restarts right
after the attention of the set's earliest layer, from that layer's clean residual stream plus its
set heads' change, and each later layer's set heads get their ablated z through a hook_z patch
(the z the one ablation routine, engine.ablation, chooses by the kind's entry in the registry,
selfrepair.ablations: a corrupted prompt's clean z, another row's, the mean, zero). With the
set's direct effect DE_S = sum of its heads' (clean scale, metric direction u):

    logit_diff  = metric(ablated) - metric(clean)
    self_repair = logit_diff - (DE_S(ablated) - DE_S(clean))
    sr_heads    = every other head's change of direct effect; sr_mlps, sr_ln as for one head

and every component's change of direct effect (engine.attribution), the set's own heads' zero.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from functools import partial
from typing import TYPE_CHECKING

import numpy as np
import torch
import xarray as xr
from jaxtyping import Float, Int
from torch import Tensor
from tqdm.auto import tqdm

from selfrepair.engine.ablation import AblationChunk, ablation_chunks, check_ablation
from selfrepair.engine.attribution import component_coords, component_effects, component_hooks
from selfrepair.engine.inputs import TaskInputs, normalize_heads, validate_tokens
from selfrepair.engine.self_repair import chunk_directions, pass_result
from selfrepair.models.blocks import cached_weights, run_block, run_mlp
from selfrepair.models.forward import check_supported, dot, restart_point
from selfrepair.models.readout import Readout, readout
from selfrepair.variables import HEAD_VARIABLES, n_components

if TYPE_CHECKING:
    from transformer_lens import HookedTransformer

__all__ = ["measure_sets", "set_pass"]


def _set_effect(
    model: HookedTransformer, chunk: AblationChunk, layer: int, heads: list[int], z: Tensor
) -> Float[Tensor, "batch pos"]:
    """The summed direct effect of `heads` of `layer` with z ([batch, pos, heads, d_head])."""
    v = torch.einsum("kdm,bpm->bpkd", model.blocks[layer].attn.W_O[heads].float(), chunk.cp.u)
    return torch.einsum("bpkd,bpkd->bp", z.float(), v) / chunk.cp.scale


def set_pass(
    model: HookedTransformer,
    ro: Readout,
    chunk: AblationChunk,
    by_layer: Mapping[int, list[int]],
    fused: bool = True,
) -> dict[str, Float[Tensor, "1 batch pos ..."]]:
    """HEAD_VARIABLES of the set `by_layer` ({layer: heads}) ablated together on one chunk, and
    "components": every component's change of direct effect ([1, batch, pos, component]).
    The chunk needs clean z of every layer from the set's first on, and its restart residual."""
    cp, layers = chunk.cp, sorted(by_layer)
    first, n_layers, n_heads = layers[0], model.cfg.n_layers, model.cfg.n_heads
    z_old = {layer: cp.z[layer][:, :, by_layer[layer]] for layer in layers}
    z_new = {layer: chunk.z_new(layer, by_layer[layer]) for layer in layers}

    def effect(z: dict[int, Tensor], among: list[int]) -> Tensor:
        return sum(_set_effect(model, chunk, la, by_layer[la], z[la]) for la in among)

    de_clean, de_ablated = effect(z_old, layers), effect(z_new, layers)
    # The set's later heads are in their layers' attention outputs: their change is no repair.
    own_later = effect({la: z_new[la] - z_old[la] for la in layers}, layers[1:])
    w_o = model.blocks[first].attn.W_O[by_layer[first]]
    resid = cp.restart[first] + torch.einsum("bpkd,kdm->bpm", z_new[first] - z_old[first], w_o)
    sr_heads, sr_mlps = torch.zeros_like(cp.scale), torch.zeros_like(cp.scale)
    mlp_parts: dict[int, Tensor] = {}
    head_parts: dict[int, Tensor] = {}

    def patch(z, hook, layer):
        z = z.clone()
        z[:, :, by_layer[layer]] = z_new[layer]
        return z

    def on_attn(x, hook, later):
        sr_heads.add_(dot(x, cp.u) - cp.attn_dot[later])

    def on_mlp(x, hook, later):
        mlp_parts[later] = dot(x, cp.u) - cp.mlp_dot[later]
        sr_mlps.add_(mlp_parts[later])

    # The patches first: hooks run in order, so the component hooks read the patched z.
    hooks = [(f"blocks.{la}.attn.hook_z", partial(patch, layer=la)) for la in layers[1:]]
    for later in range(first + 1, n_layers):
        hooks.append((f"blocks.{later}.hook_attn_out", partial(on_attn, later=later)))
        if not model.cfg.attn_only:
            hooks.append((f"blocks.{later}.hook_mlp_out", partial(on_mlp, later=later)))
    hooks += component_hooks(model, cp, first, 1, chunk_directions(model, chunk), head_parts)
    with model.hooks(fwd_hooks=hooks):
        if restart_point(model) == "resid_mid":  # the MLP of the first layer reads the set
            mlp_out = run_mlp(model.blocks[first], resid, fused)
            mlp_parts[first] = dot(mlp_out, cp.u) - cp.mlp_dot[first]
            sr_mlps.add_(mlp_parts[first])
            resid = resid + mlp_out
        for later in range(first + 1, n_layers):
            resid = run_block(model.blocks[later], resid, fused)
    res = pass_result(ro, cp, resid[None], False, de_clean[None], de_ablated[None])
    res["sr_heads"] = (sr_heads / cp.scale - own_later)[None]
    res["sr_mlps"] = (sr_mlps / cp.scale)[None]
    mlps = {la: p[None] for la, p in mlp_parts.items()}
    components = component_effects(model, cp.scale, head_parts, mlps, res["sr_ln"])
    for layer in layers:  # a set head's own change is its direct effect's, not a repair
        components[..., [layer * n_heads + h for h in by_layer[layer]]] = 0.0
    res["components"] = components
    return res


def measure_sets(
    model: HookedTransformer,
    tokens: Int[Tensor, "batch pos"],
    ablation: str,
    sets: Mapping[str, Iterable[Sequence[int]]],
    *,
    batch_size: int | None = None,
    mean_include_bos: bool = True,
    fused: bool = True,
    task: TaskInputs | None = None,
    scored: np.ndarray | None = None,
    progress: bool = False,
) -> xr.Dataset:
    """Each named set of heads ablated jointly, per token (set_pass). Memory: the output's
    float32 arrays, kept at the scored tokens only as each chunk ends (sets x scored tokens x
    components x 4 bytes), and one chunk's passes (batch_size rows).

    Args:
        model: the HookedTransformer (not modified).
        tokens: [batch, pos + 1] token rows, each starting with BOS.
        ablation: a kind of selfrepair.ablations.KINDS (engine.ablation).
        sets: name -> (layer, head) pairs ablated together.
        batch_size: rows per clean pass (default: all); never changes a number.
        mean_include_bos: whether the mean z includes position 0.
        fused: run blocks with selfrepair.models.blocks' fused forward where it applies.
        task: a task's counterfactuals, corrupted prompts and real positions.
        scored: bool [batch, pos], the tokens kept (a task's answer positions); the result is
            then analysis.tasks.scored_tokens' of the full one, bitwise. None: every token.
        progress: show a progress bar.

    Returns:
        HEAD_VARIABLES with dims set, batch, pos (de_clean and de_ablated: the set's summed
        direct effect), `dde` (set, batch, pos, component), logit_clean and ln_scale_clean;
        with `scored`, one `token` axis (coordinates prompt, position) for batch and pos.
    """
    check_ablation(ablation)
    check_supported(model)
    validate_tokens(model, tokens, task)
    by_set = {name: normalize_heads(model, heads) for name, heads in sets.items()}
    if not by_set:
        raise ValueError("sets is empty: name at least one set of heads")
    first = min(min(layers) for layers in by_set.values())
    n_rows, n_pos = tokens.shape[0], tokens.shape[1] - 1
    keep, ends = _kept(scored, n_rows, n_pos)
    cfg = model.cfg
    n_comp = n_components(cfg.n_layers, cfg.n_heads)
    out = _empty(len(by_set), int(ends[-1]), n_comp)
    ro = readout(model)
    chunks = ablation_chunks(
        model,
        tokens.to(device=model.W_U.device, dtype=torch.long),
        ablation,
        range(first, cfg.n_layers),
        ro,
        restart_layers={min(layers) for layers in by_set.values()},
        batch_size=batch_size or n_rows,
        mean_include_bos=mean_include_bos,
        fused=fused,
        task=task,
    )
    bar = tqdm(total=n_rows, desc=f"{ablation} sets", unit="row", disable=not progress)
    with torch.inference_mode(), cached_weights():
        for chunk in chunks:
            rows = chunk.span
            mask = keep[rows]
            start = int(ends[rows.start - 1]) if rows.start else 0
            sl = slice(start, start + int(mask.sum()))
            out["logit_clean"][sl] = chunk.cp.logit.cpu().numpy()[mask]
            out["ln_scale_clean"][sl] = chunk.cp.scale.cpu().numpy()[mask]
            for i, by_layer in enumerate(by_set.values()):
                res = set_pass(model, ro, chunk, by_layer, fused)
                out["dde"][i, sl] = res.pop("components")[0].cpu().numpy()[mask]
                for name, value in res.items():
                    out[name][i, sl] = value[0].cpu().numpy()[mask]
            bar.update(len(chunk.rows))
    bar.close()
    if scored is None:  # every token kept: back to batch and pos
        out = {k: _unflatten(v, k == "dde", n_rows, n_pos) for k, v in out.items()}
    return _sets_dataset(model, out, by_set, ablation, None if scored is None else keep)


def _kept(scored: np.ndarray | None, n_rows: int, n_pos: int) -> tuple[np.ndarray, np.ndarray]:
    """The tokens kept (bool [batch, pos]) and where each row's slots end: one slot per kept
    token in row-major order (scored_tokens'), so each chunk's are the next run of slots."""
    keep = np.ones((n_rows, n_pos), bool) if scored is None else np.asarray(scored, bool)
    if keep.shape != (n_rows, n_pos):
        raise ValueError(f"scored has shape {keep.shape}; it needs the rows' {(n_rows, n_pos)}")
    return keep, np.cumsum(keep.sum(1))


def _empty(n_sets: int, n_kept: int, n_comp: int) -> dict[str, np.ndarray]:
    """The result's arrays, float32 from the start: each value is written once, so this is the
    cast the store made of float64 ones, bitwise."""
    out = {v: np.zeros((n_sets, n_kept), np.float32) for v in HEAD_VARIABLES}
    out["dde"] = np.zeros((n_sets, n_kept, n_comp), np.float32)
    out["logit_clean"] = np.zeros(n_kept, np.float32)
    out["ln_scale_clean"] = np.zeros(n_kept, np.float32)
    return out


def _unflatten(values: np.ndarray, per_component: bool, n_rows: int, n_pos: int) -> np.ndarray:
    """[..., token(, component)] of every token as [..., batch, pos(, component)]."""
    lead = values.shape[: values.ndim - 1 - per_component]
    return values.reshape(*lead, n_rows, n_pos, *values.shape[values.ndim - per_component :])


def _sets_dataset(
    model: HookedTransformer,
    out: dict[str, np.ndarray],
    by_set: dict,
    ablation: str,
    scored: np.ndarray | None,
) -> xr.Dataset:
    dims = ("set", "batch", "pos") if scored is None else ("set", "token")
    data = {name: (dims, out[name]) for name in HEAD_VARIABLES}
    data["dde"] = ((*dims, "component"), out["dde"])
    data["logit_clean"] = (dims[1:], out["logit_clean"])
    data["ln_scale_clean"] = (dims[1:], out["ln_scale_clean"])
    heads = {
        name: [[layer, h] for layer, hs in by_layer.items() for h in hs]
        for name, by_layer in by_set.items()
    }
    coords = {"set": list(by_set), **component_coords(model)}
    attrs = {"ablation": ablation, "model": model.cfg.model_name, "sets": heads}
    ds = xr.Dataset(data, coords=coords, attrs=attrs)
    if scored is None:
        return ds
    prompt, position = np.nonzero(scored)
    return ds.assign_coords(prompt=("token", prompt), position=("token", position))
