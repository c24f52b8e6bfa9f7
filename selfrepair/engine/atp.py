"""Attribution patching (AtP) and AtP*'s GradDrop for every head, against the engine's own ablation.

AtP (Nanda 2023; Kramár et al. 2024) estimates the change of a metric M when head h's z is
replaced by z' (the engine's own replacement: engine.ablation.ablated_z, with its resample
partner and its mean) to first order at the clean run:

    AtP(h) = sum over positions p of  dM/dz_h[p] . (z'_h[p] - z_h[p])

The metric is a direction per scored position (`Metric`): m[b, t] = x[b, t] . d[b, t] / s(x[b, t])
+ c[b, t] on the final residual x (s: the final norm's scale), and a row's metric is
sum_t w[b, t] m[b, t] (engine.metric). With d the correct token's unembedding column
(`TokenMetric`) m is the centred correct-token logit the engine's logit_diff changes, and every
weight 1 (running text). A logit difference is d = u_a - u_b; answer positions are weights. A
task (engine.inputs.TaskInputs, as engine.measure_heads takes it) gives the counterfactuals of
the logit difference, the corrupted prompts corrupted ablation takes z' from (run after the
batch's rows with weight 0: engine.ablation's pool) and the real positions of the mean.

Units. The exact engine's logit_diff at token t is the effect of ablating h at every position on
m[b, t]. Rows do not interact, so ONE backward pass of sum_b sum_t w m over a batch gives every
row's dM_b/dz: the row estimate (`atp_row`: of the row's summed change) for every head at once.
The same over only a head's own top tokens (`top`: weights = the head's mask) gives, per row,
the estimate of the change of that head's top-token sum (`atp_top`); it needs one backward pass
per head (down to its layer only), and its mean over tokens is exactly the mean of per-token
estimates (AtP is linear in the metric). A per-token estimate (`tokens`) needs dm[b, t]/dz for
each token separately: one backward per token of a row; rows again share a pass, so backward k
takes the k-th selected position of every row, and a batch needs as many backward passes as its
row with the most selected tokens (`atp_token`).

GradDrop (AtP*): for each layer l, the backward pass again with the gradient through layer l's
contribution to the residual stream (its attention and MLP outputs) dropped, giving estimate_l(h).
A head in layer l itself writes through that contribution, so estimate_l(h) = 0; for a head above
l nothing changes (estimate_l = AtP); only heads below l need the pass, so L - 1 more backward
passes per batch (per head h, its L - 1 - layer(h) for `graddrop_top`; per token group for
`graddrop_token`). AtP* combines them as
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

from selfrepair.ablations import KINDS, ROWS, Ablation, ablation_kind
from selfrepair.engine.ablation import (
    _pool,
    _row_index,
    ablated_z,
    check_ablation,
    with_partners,
)
from selfrepair.engine.gradients import (
    GradPass,
    frozen_parameters,
    grad_pass,
    graddrop_estimates,
    head_estimates,
    head_unit_estimates,
    token_estimates,
)
from selfrepair.engine.inputs import TaskInputs, validate_tokens
from selfrepair.engine.metric import Metric, TokenMetric
from selfrepair.engine.replacements import replacement_tables
from selfrepair.models.blocks import cached_weights
from selfrepair.models.forward import check_supported
from selfrepair.models.readout import Readout, readout

if TYPE_CHECKING:
    from transformer_lens import HookedTransformer

__all__ = [
    "ATP_VARIABLES",
    "check_atp_ablation",
    "chunk_estimates",
    "measure_atp",
    "z_changes",
]

ATP_VARIABLES = (
    "atp_row",
    "graddrop_row",
    "atp_top",
    "graddrop_top",
    "atp_token",
    "graddrop_token",
)


@dataclass
class _ChunkResult:
    metric: Tensor  # [batch]: the clean row metric
    weight: Tensor  # [batch]: its summed weights
    atp_row: Tensor  # [layer, head, batch]
    graddrop_row: Tensor | None = None  # [drop_layer, layer, head, batch]
    atp_top: Tensor | None = None  # [layer, head, batch]
    graddrop_top: Tensor | None = None  # [drop_layer, layer, head, batch]
    n_top: Tensor | None = None  # [layer, head, batch]
    atp_token: Tensor | None = None  # [layer, head, batch, pos], NaN where not selected
    graddrop_token: Tensor | None = None  # [drop_layer, layer, head, batch, pos]


def chunk_estimates(
    gp: GradPass,
    dz: dict[int, Tensor],
    weight: Tensor,
    bar: tqdm,
    graddrop: bool = True,
    top: Tensor | None = None,
    top_graddrop: bool = True,
    per_token: Tensor | None = None,
) -> _ChunkResult:
    """One batch's row estimates (one backward, L - 1 more with GradDrop), head units on `top`
    ([layer, head, n, pos] of the batch's own rows: head_unit_estimates) and per-token ones on
    `per_token` ([layer, head, n, pos]: token_estimates, every head at the union of them)."""
    n_layers, n_heads = len(gp.z), gp.z[0].shape[2]
    n = next(iter(dz.values())).shape[0]
    above = list(range(1, n_layers)) if graddrop else []  # GradDrop's passes start there
    grads, output_grads = gp.grads(weight, list(range(n_layers)), above)
    atp = head_estimates(grads, dz, n_layers, n_heads)
    metric = (weight * gp.m.detach()).sum(1)[:n]
    res = _ChunkResult(metric, weight.sum(1)[:n], atp)
    bar.update(1)
    if graddrop:
        res.graddrop_row = graddrop_estimates(gp, output_grads, dz, atp)
        bar.update(n_layers - 1)
    if top is not None:
        res.atp_top, res.graddrop_top = head_unit_estimates(gp, dz, top, top_graddrop)
        res.n_top = top.sum(-1)
        heads = top.flatten(2).any(-1)
        layer = torch.arange(n_layers, device=top.device)[:, None].expand_as(heads)
        bar.update(int(heads.sum()) + top_graddrop * int((n_layers - 1 - layer)[heads].sum()))
    if per_token is not None:
        res.atp_token, res.graddrop_token, passes = token_estimates(
            gp, dz, per_token.any((0, 1)), graddrop
        )
        bar.update(passes)
    return res


def measure_atp(
    model: HookedTransformer,
    tokens: Int[Tensor, "rows pos_plus_1"],
    ablation: str = "resample",
    *,
    top: Bool[np.ndarray, "layer head rows pos"] | None = None,
    per_token: Bool[np.ndarray, "layer head rows pos"] | None = None,
    graddrop: bool = True,
    top_graddrop: bool | None = None,
    metric: Callable[[Tensor], Metric] | None = None,
    task: TaskInputs | None = None,
    scored: Bool[np.ndarray, "rows pos"] | None = None,
    batch_size: int | None = None,
    source: Int[Tensor, " rows"] | None = None,
    mean_include_bos: bool = True,
    z_mean: dict[int, Tensor] | None = None,
    fused: bool = True,
    progress: bool = False,
    desc: str | None = None,
) -> xr.Dataset:
    """AtP (and GradDrop) estimates of every head's ablation effect on the metric: per row,
    per row on each head's own tokens (`top`), per token (`per_token`).

    Args:
        model: the HookedTransformer (not modified).
        tokens: [rows, pos + 1] token rows, each starting with BOS.
        ablation: a kind of selfrepair.ablations.KINDS: z' exactly as engine.measure_heads
            chooses it over the same tokens and task (pass the same rows for the same z').
        top: bool [layer, head, rows, pos]: each head's own tokens (e.g. its top 2%): per row,
            the estimate of the change of their sum (one backward pass per head and batch).
        per_token: bool [layer, head, rows, pos]: tokens where each head's per-token estimate
            is wanted (one backward pass per token of a row, for every head at once).
        graddrop: also GradDrop (L - 1 more backward passes per row pass and token group;
            per head, one per layer above it); top_graddrop: on `top` too (default: graddrop).
        metric: rows -> their Metric (default: TokenMetric on `task` and `scored`).
        task: a task's counterfactuals, corrupted prompts and real positions (TaskInputs).
        scored: bool [rows, pos], the positions the metric sums (default: every position).
        batch_size: rows per pass (default: all); never changes a number.
        source: resample partner of each row (default: engine.ablation.resample_source).
        mean_include_bos: whether the mean z includes position 0.
        z_mean: the mean z per layer when already computed (default: over `tokens`).
        fused: run blocks with models.blocks' fused forward where it applies; progress, desc:
            show a progress bar (one step per backward pass) with this label.

    Returns:
        atp_row (layer, head, batch), graddrop_row (drop_layer, layer, head, batch): estimates
        of the change of each row's metric (sum over its scored positions); metric_clean and
        n_scored (batch). With `top`: atp_top, graddrop_top, n_top (the head's tokens in the
        row), the same over each head's own tokens. With `per_token`, per selected (head,
        token) entry (dim entry, ordered by layer, head, batch, pos): atp_token,
        graddrop_token (drop_layer, entry) and the entry's layer, head, batch and pos.
    """
    kind = check_atp_ablation(ablation, task)
    check_supported(model)
    validate_tokens(model, tokens, task)
    n_rows = tokens.shape[0]
    masks = {"top": _mask(model, top, tokens), "per_token": _mask(model, per_token, tokens)}
    batch_size = batch_size or n_rows
    tokens = tokens.to(device=model.W_U.device, dtype=torch.long)
    ro = readout(model)
    pool, counter, source = _pool(tokens, kind, source, task)
    metric = metric or TokenMetric(ro, pool, counter, _weights(scored, pool, n_rows))
    z_mean = _mean(model, tokens, kind, z_mean, task, batch_size, mean_include_bos, fused)
    top_graddrop = graddrop if top_graddrop is None else top_graddrop
    parts = []
    bar = tqdm(desc=desc or "AtP", unit="backward", disable=not progress, mininterval=5.0)
    with torch.enable_grad(), frozen_parameters(model), cached_weights():
        for start in range(0, n_rows, batch_size):
            rows = torch.arange(start, min(start + batch_size, n_rows))
            gp, dz, weight = _batch_pass(
                model, pool, ro, metric, rows, ablation, source, z_mean, fused, task
            )
            own = {k: None if v is None else v[:, :, rows] for k, v in masks.items()}
            res = chunk_estimates(
                gp, dz, weight, bar, graddrop, own["top"], top_graddrop, own["per_token"]
            )
            parts.append((rows, res))
            del gp  # the graph goes before the next batch's is built
    bar.close()
    return atp_dataset(model, parts, per_token, ablation, source, n_rows, tokens.shape[1] - 1)


def check_atp_ablation(ablation: str, task: TaskInputs | None = None) -> Ablation:
    """The registry's kind of this name; fails naming the fix when it takes its partner rows
    from a task's corrupted prompts and `task` has none (running text has none)."""
    kind = check_ablation(ablation)
    if kind.needs_corrupted and (task is None or task.partners is None):
        usable = [k.name for k in KINDS.values() if not k.needs_corrupted]
        raise ValueError(
            f"measure_atp does not take {ablation!r} ablation without a task's corrupted "
            f"prompts: pass task=TaskInputs(partners=...), or choose one of {', '.join(usable)}"
        )
    return kind


def _mean(
    model: HookedTransformer,
    tokens: Tensor,
    kind: Ablation,
    z_mean: dict[int, Tensor] | None,
    task: TaskInputs | None,
    batch_size: int,
    mean_include_bos: bool,
    fused: bool,
) -> dict[int, Tensor]:
    """The kind's table per layer (engine.replacements.replacement_tables: the mean z, minus
    the value bias, the template means) unless given."""
    if z_mean is not None:
        return z_mean
    layers = range(model.cfg.n_layers)
    return replacement_tables(
        model, tokens, kind, layers, batch_size, mean_include_bos, fused, task
    )


def _weights(scored: np.ndarray | None, pool: Tensor, n_rows: int) -> Tensor | None:
    """The metric's weight of every pool row ([pool rows, pos]): 1 at the scored positions of
    the measured rows, 0 elsewhere and on the partner rows after them; None (every position
    weighted 1) without `scored`."""
    if scored is None:
        return None
    if np.shape(scored) != (n_rows, pool.shape[1] - 1):
        raise ValueError(f"scored must be [rows, pos] {(n_rows, pool.shape[1] - 1)}")
    weight = torch.zeros(pool.shape[0], pool.shape[1] - 1, device=pool.device)
    weight[: scored.shape[0]] = torch.from_numpy(np.asarray(scored, bool)).to(weight)
    return weight


def _batch_pass(
    model: HookedTransformer,
    tokens: Tensor,
    ro: Readout,
    metric: Callable[[Tensor], Metric],
    rows: Tensor,
    ablation: str,
    source: Tensor | None,
    z_mean: dict[int, Tensor],
    fused: bool,
    task: TaskInputs | None = None,
) -> tuple[GradPass, dict[int, Tensor], Tensor]:
    """One batch's forward graph (with its partner rows), z' - z of its own rows, and the
    metric's weights, zero on the partner rows (they only lend their z)."""
    paired = ablation_kind(ablation).takes_partner_rows
    run_rows = with_partners(rows, source) if paired else rows
    m = metric(run_rows)
    weight = torch.zeros_like(m.weight)
    weight[: len(rows)] = m.weight[: len(rows)]
    gp = grad_pass(model, tokens[run_rows.to(tokens.device)], ro, m, run_rows, fused)
    return gp, z_changes(gp, ablation, rows, run_rows, source, z_mean, task), weight


def _mask(model: HookedTransformer, mask: np.ndarray | None, tokens: Tensor) -> Tensor | None:
    """A [layer, head, rows, pos] token mask as a bool tensor on the model's device."""
    if mask is None:
        return None
    shape = (model.cfg.n_layers, model.cfg.n_heads, tokens.shape[0], tokens.shape[1] - 1)
    if mask.shape != shape:
        raise ValueError(f"token masks must be [layer, head, rows, pos] {shape}, got {mask.shape}")
    return torch.from_numpy(np.ascontiguousarray(mask, bool)).to(model.W_U.device)


def z_changes(
    gp: GradPass,
    ablation: str,
    rows: Tensor,
    run_rows: Tensor,
    source: Tensor | None,
    z_mean: dict[int, Tensor],
    task: TaskInputs | None = None,
) -> dict[int, Float[Tensor, "batch pos head d_head"]]:
    """z' - z of every head of every layer for the batch's own rows (engine.ablation's
    ablated_z: the partner's z, found among run_rows, the kind's table or 0)."""
    device = next(iter(gp.z.values())).device
    partner = _row_index(ablation_kind(ablation), run_rows, rows, source, task, device)
    dz = {}
    for layer, z in gp.z.items():
        z = z.detach()
        dz[layer] = ablated_z(ablation, z, len(rows), partner, z_mean.get(layer)) - z[: len(rows)]
    return dz


def atp_dataset(
    model: HookedTransformer,
    parts: list[tuple[Tensor, _ChunkResult]],
    per_token: np.ndarray | None,
    ablation: str,
    source: Tensor | None,
    n_rows: int,
    n_pos: int,
) -> xr.Dataset:
    """measure_atp's chunks as one Dataset."""
    cfg = model.cfg
    first = parts[0][1]

    def cat(name: str, axis: int) -> np.ndarray:
        return np.concatenate([getattr(r, name).cpu().numpy() for _, r in parts], axis=axis)

    head_dims = ("layer", "head", "batch")
    data = {
        "atp_row": (head_dims, cat("atp_row", -1)),
        "metric_clean": ("batch", cat("metric", 0)),
        "n_scored": ("batch", cat("weight", 0)),
    }
    for name, dims in (("graddrop_row", ("drop_layer", *head_dims)), ("atp_top", head_dims)):
        if getattr(first, name) is not None:
            data[name] = (dims, cat(name, -1))
    if first.graddrop_top is not None:
        data["graddrop_top"] = (("drop_layer", *head_dims), cat("graddrop_top", -1))
    if first.n_top is not None:
        data["n_top"] = (head_dims, cat("n_top", -1).astype(np.int64))
    if per_token is not None:
        where = np.nonzero(per_token)  # layer, head, batch, pos: in that order
        data["atp_token"] = ("entry", cat("atp_token", 2)[where])
        for name, index in zip(("layer", "head", "batch", "pos"), where, strict=True):
            data[f"entry_{name}"] = ("entry", index.astype(np.int64))
        if first.graddrop_token is not None:
            data["graddrop_token"] = (("drop_layer", "entry"), cat("graddrop_token", 3)[:, *where])
    coords = {
        "layer": np.arange(cfg.n_layers),
        "head": np.arange(cfg.n_heads),
        "batch": np.arange(n_rows),
    }
    if any("drop_layer" in dims for dims, _ in data.values()):
        coords["drop_layer"] = np.arange(cfg.n_layers)
    if ablation_kind(ablation).partner_pool == ROWS:
        coords["resample_source"] = ("batch", source.numpy())
    attrs = {
        "ablation": ablation,
        "model": cfg.model_name,
        "n_pos": n_pos,
        "units": "row: a row's summed metric; top: over the head's own tokens in the row; "
        "token: one token",
    }
    return xr.Dataset(data, coords=coords, attrs=attrs)
