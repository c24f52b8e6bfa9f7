"""Attribution patching (AtP) and AtP*'s GradDrop for every head, against the engine's own ablation.

AtP (Nanda 2023; Kramár et al. 2024) estimates the change of a metric M when head h's z is
replaced by z' (the engine's own replacement: engine.ablation.ablated_z, with its resample
partner and its mean) to first order at the clean run:

    AtP(h) = sum over positions p of  dM/dz_h[p] . (z'_h[p] - z_h[p])

The metric is a direction per scored position (`Metric`): m[b, t] = x[b, t] . d[b, t] / s(x[b, t])
+ c[b, t] on the final residual x (s: the final norm's scale), and a row's metric is
sum_t w[b, t] m[b, t] (engine.metric). With d the correct token's unembedding column
(`TokenMetric`) m is the centred correct-token logit the engine's logit_diff changes, and every
weight 1 (running text). A logit difference is d = u_a - u_b; answer positions are weights.

Units. The exact engine's logit_diff at token t is the effect of ablating h at every position on
m[b, t]. Rows do not interact, so ONE backward pass of sum_b sum_t w m over a batch gives every
row's dM_b/dz: the row estimate (`atp_row`: of the row's summed change) for every head at once.
A per-token estimate needs dm[b, t]/dz for each scored t separately: one backward per token of a
row. Rows again share a pass, so backward k takes the k-th selected position of every row, and a
batch needs as many backward passes as its row with the most selected tokens (`atp_token`, only
where asked, e.g. each head's top tokens).

GradDrop (AtP*): for each layer l, the backward pass again with the gradient through layer l's
contribution to the residual stream (its attention and MLP outputs) dropped, giving estimate_l(h).
A head in layer l itself writes through that contribution, so estimate_l(h) = 0; for a head above
l nothing changes (estimate_l = AtP); only heads below l need the pass, so L - 1 more backward
passes per batch (per selected-token group for `graddrop_token`). AtP* combines them as
(1 / (L - 1)) sum_l |estimate_l(h)| per unit (an estimate of |effect|); the per-layer, signed
estimates are returned so that any combination can be formed (analysis.atp). The forward pass
and its gates: engine.gradients.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch
import xarray as xr
from jaxtyping import Bool, Float, Int
from torch import Tensor
from tqdm.auto import tqdm

from selfrepair.engine.ablation import (
    ablated_z,
    check_ablation,
    checked_source,
    mean_z,
    partner_index,
    with_partners,
)
from selfrepair.engine.gradients import GradPass, frozen_parameters, grad_pass
from selfrepair.engine.inputs import validate_tokens
from selfrepair.engine.metric import Metric, TokenMetric
from selfrepair.models.blocks import cached_weights
from selfrepair.models.forward import check_supported
from selfrepair.models.readout import readout

if TYPE_CHECKING:
    from transformer_lens import HookedTransformer

__all__ = [
    "ATP_VARIABLES",
    "chunk_estimates",
    "graddrop_estimates",
    "head_estimates",
    "measure_atp",
    "token_groups",
    "z_changes",
]

ATP_VARIABLES = ("atp_row", "graddrop_row", "atp_token", "graddrop_token")


def head_estimates(
    grads: dict[int, Tensor], dz: dict[int, Tensor], n_layers: int, n_heads: int
) -> Float[Tensor, "layer head batch"]:
    """sum over positions and d_head of grad . (z' - z) per head and row (the batch's own rows:
    dz's); 0 for layers without a gradient."""
    n = next(iter(dz.values())).shape[0]
    out = torch.zeros(n_layers, n_heads, n, device=next(iter(dz.values())).device)
    for layer, g in grads.items():
        out[layer] = torch.einsum("bphd,bphd->hb", g[:n].float(), dz[layer].float())
    return out


def graddrop_estimates(
    gp: GradPass, grad_out: Tensor, dz: dict[int, Tensor], atp: Tensor
) -> Float[Tensor, "drop_layer layer head batch"]:
    """estimate_l for every dropped layer l: AtP above l, 0 in l, a backward pass below l."""
    n_layers, n_heads = atp.shape[:2]
    out = atp.unsqueeze(0).repeat(n_layers, 1, 1, 1)
    for dropped in range(n_layers):
        out[dropped, dropped] = 0.0
        if dropped == 0:
            continue
        gp.switch.dropped = dropped
        try:
            grads = gp.grads(grad_out, list(range(dropped)))
        finally:
            gp.switch.dropped = None
        out[dropped, :dropped] = head_estimates(grads, dz, n_layers, n_heads)[:dropped]
    return out


def token_groups(selected: Bool[Tensor, "batch pos"]) -> Int[Tensor, "batch k"]:
    """Column k: the k-th selected position of each row (-1 where the row has fewer); the
    backward passes of a per-token estimate, one per column."""
    counts = selected.sum(1)
    k = int(counts.max()) if selected.numel() else 0
    groups = torch.full((selected.shape[0], k), -1, dtype=torch.long, device=selected.device)
    rank = selected.long().cumsum(1) - 1
    b, p = selected.nonzero(as_tuple=True)
    groups[b, rank[b, p]] = p
    return groups


@dataclass
class _ChunkResult:
    atp_row: Tensor  # [layer, head, batch]
    graddrop_row: Tensor | None  # [drop_layer, layer, head, batch]
    atp_token: Tensor | None  # [layer, head, batch, pos], NaN where not selected
    graddrop_token: Tensor | None  # [drop_layer, layer, head, batch, pos]
    metric: Tensor  # [batch]: the clean row metric
    weight: Tensor  # [batch]: its summed weights


def chunk_estimates(
    gp: GradPass,
    dz: dict[int, Tensor],
    weight: Tensor,
    selected: Tensor | None,
    graddrop: bool,
    bar: tqdm,
    token_graddrop: bool | None = None,
) -> _ChunkResult:
    """Row estimates of one batch (one backward, L - 1 more with GradDrop) and, on `selected`
    positions ([n, pos] of the batch's own rows), per-token ones (per token_groups column; with
    GradDrop unless token_graddrop is False)."""
    token_graddrop = graddrop if token_graddrop is None else token_graddrop
    n_layers, n_heads = len(gp.z), gp.z[0].shape[2]
    n = next(iter(dz.values())).shape[0]
    layers = list(range(n_layers))
    atp = head_estimates(gp.grads(weight, layers), dz, n_layers, n_heads)
    bar.update(1)
    res = _ChunkResult(
        atp, None, None, None, (weight * gp.m.detach()).sum(1)[:n], weight.sum(1)[:n]
    )
    if graddrop:
        res.graddrop_row = graddrop_estimates(gp, weight, dz, atp)
        bar.update(n_layers - 1)
    if selected is None:
        return res
    n_pos = gp.m.shape[1]
    res.atp_token = atp.new_full((n_layers, n_heads, n, n_pos), float("nan"))
    if token_graddrop:
        res.graddrop_token = atp.new_full((n_layers, *res.atp_token.shape), float("nan"))
    for column in token_groups(selected).T:
        rows = (column >= 0).nonzero().flatten()
        one_hot = torch.zeros_like(gp.m)
        one_hot[rows, column[rows]] = 1.0
        est = head_estimates(gp.grads(one_hot, layers), dz, n_layers, n_heads)
        res.atp_token[:, :, rows, column[rows]] = est[:, :, rows]
        bar.update(1)
        if token_graddrop:
            drop = graddrop_estimates(gp, one_hot, dz, est)
            res.graddrop_token[..., rows, column[rows]] = drop[..., rows]
            bar.update(n_layers - 1)
    return res


def measure_atp(
    model: HookedTransformer,
    tokens: Int[Tensor, "rows pos_plus_1"],
    ablation: str = "resample",
    *,
    top: Bool[np.ndarray, "layer head rows pos"] | None = None,
    graddrop: bool = True,
    token_graddrop: bool | None = None,
    metric: Callable[[Tensor], Metric] | None = None,
    batch_size: int | None = None,
    source: Int[Tensor, " rows"] | None = None,
    mean_include_bos: bool = True,
    z_mean: dict[int, Tensor] | None = None,
    fused: bool = True,
    progress: bool = False,
    desc: str | None = None,
) -> xr.Dataset:
    """AtP (and GradDrop) estimates of every head's ablation effect on the metric, per row and,
    where `top` asks, per token.

    Args:
        model: the HookedTransformer (not modified).
        tokens: [rows, pos + 1] token rows, each starting with BOS.
        ablation: "resample", "mean" or "zero": z' exactly as engine.measure_heads chooses it
            over the same tokens (pass the same rows, e.g. one shard, for the same partners
            and mean).
        top: bool [layer, head, rows, pos]: the tokens where each head's per-token estimate
            is wanted (e.g. its top 2%); None: row estimates only.
        graddrop: also the GradDrop estimates (L - 1 more backward passes per row pass and
            per token group).
        token_graddrop: GradDrop per token too (default: as graddrop); its L - 1 passes per
            token group are most of the per-token cost.
        metric: rows -> their Metric (default: TokenMetric, the centred correct-token logit).
        batch_size: rows per pass (default: all); never changes a number.
        source: resample partner of each row (default: engine.ablation.resample_source).
        mean_include_bos: whether the mean z includes position 0.
        z_mean: the mean z per layer when already computed (default: over `tokens`).
        fused: run blocks with models.blocks' fused forward where it applies.
        progress, desc: show a progress bar (one step per backward pass) with this label.

    Returns:
        atp_row (layer, head, batch), graddrop_row (drop_layer, layer, head, batch): estimates
        of the change of each row's metric (sum over its scored positions); metric_clean and
        n_scored (batch). With `top`, per selected (head, token) entry (dim entry, ordered by
        layer, head, batch, pos): atp_token, graddrop_token (drop_layer, entry) and the
        entry's layer, head, batch and pos.
    """
    check_ablation(ablation)
    check_supported(model)
    validate_tokens(model, tokens)
    cfg = model.cfg
    n_rows, n_pos = tokens.shape[0], tokens.shape[1] - 1
    if top is not None and top.shape != (cfg.n_layers, cfg.n_heads, n_rows, n_pos):
        raise ValueError(f"top must be [layer, head, rows, pos], got {top.shape}")
    batch_size = batch_size or n_rows
    tokens = tokens.to(device=model.W_U.device, dtype=torch.long)
    ro = readout(model)
    metric = metric or TokenMetric(ro, tokens)
    if ablation == "resample":
        source = checked_source(source, n_rows)
    if ablation == "mean" and z_mean is None:
        z_mean = mean_z(model, tokens, range(cfg.n_layers), batch_size, mean_include_bos, fused)
    union = None if top is None else torch.from_numpy(top.any((0, 1)))
    parts = []
    bar = tqdm(desc=desc or "AtP", unit="backward", disable=not progress, mininterval=5.0)
    with torch.enable_grad(), frozen_parameters(model), cached_weights():
        for start in range(0, n_rows, batch_size):
            rows = torch.arange(start, min(start + batch_size, n_rows))
            run_rows = with_partners(rows, source) if ablation == "resample" else rows
            m = metric(run_rows)
            weight = torch.zeros_like(m.weight)
            weight[: len(rows)] = m.weight[: len(rows)]  # partner rows only lend their z
            gp = grad_pass(model, tokens[run_rows.to(tokens.device)], ro, m, run_rows, fused)
            dz = z_changes(gp, ablation, rows, run_rows, source, z_mean or {})
            sel = None if union is None else union[rows].to(tokens.device)
            res = chunk_estimates(gp, dz, weight, sel, graddrop, bar, token_graddrop)
            parts.append((rows, res))
            del gp  # the graph goes before the next batch's is built
    bar.close()
    return atp_dataset(model, parts, top, ablation, source, n_rows, n_pos)


def z_changes(
    gp: GradPass,
    ablation: str,
    rows: Tensor,
    run_rows: Tensor,
    source: Tensor | None,
    z_mean: dict[int, Tensor],
) -> dict[int, Float[Tensor, "batch pos head d_head"]]:
    """z' - z of every head of every layer for the batch's own rows (engine.ablation's
    ablated_z: the resample partner's z, found among run_rows, the mean or 0)."""
    device = next(iter(gp.z.values())).device
    resample = ablation == "resample"
    partner = partner_index(run_rows, rows, source, device) if resample else None
    dz = {}
    for layer, z in gp.z.items():
        z = z.detach()
        dz[layer] = ablated_z(ablation, z, len(rows), partner, z_mean.get(layer)) - z[: len(rows)]
    return dz


def atp_dataset(
    model: HookedTransformer,
    parts: list[tuple[Tensor, _ChunkResult]],
    top: np.ndarray | None,
    ablation: str,
    source: Tensor | None,
    n_rows: int,
    n_pos: int,
) -> xr.Dataset:
    """measure_atp's chunks as one Dataset."""
    cfg = model.cfg

    def cat(name: str, axis: int) -> np.ndarray:
        return np.concatenate([getattr(r, name).cpu().numpy() for _, r in parts], axis=axis)

    head_dims = ("layer", "head", "batch")
    data = {
        "atp_row": (head_dims, cat("atp_row", -1)),
        "metric_clean": ("batch", cat("metric", 0)),
        "n_scored": ("batch", cat("weight", 0)),
    }
    graddrop = parts[0][1].graddrop_row is not None
    if graddrop:
        data["graddrop_row"] = (("drop_layer", *head_dims), cat("graddrop_row", -1))
    if top is not None:
        where = np.nonzero(top)  # layer, head, batch, pos: in that order
        atp_token = cat("atp_token", 2)
        data["atp_token"] = ("entry", atp_token[where])
        for name, index in zip(("layer", "head", "batch", "pos"), where, strict=True):
            data[f"entry_{name}"] = ("entry", index.astype(np.int64))
        if parts[0][1].graddrop_token is not None:
            data["graddrop_token"] = (("drop_layer", "entry"), cat("graddrop_token", 3)[:, *where])
    coords = {
        "layer": np.arange(cfg.n_layers),
        "head": np.arange(cfg.n_heads),
        "batch": np.arange(n_rows),
        "drop_layer": np.arange(cfg.n_layers),
    }
    if ablation == "resample":
        coords["resample_source"] = ("batch", source.numpy())
    attrs = {
        "ablation": ablation,
        "model": cfg.model_name,
        "n_pos": n_pos,
        "metric": "centred correct-token logit, summed over each row's scored positions",
        "units": "atp_row/graddrop_row: a row's summed change; atp_token: one token's change",
    }
    if not graddrop:
        coords.pop("drop_layer")
    return xr.Dataset(data, coords=coords, attrs=attrs)
