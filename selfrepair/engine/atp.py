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

Kinds. Only z' - z depends on the ablation kind: the forward graph and every backward pass
above depend on the clean run and the metric. `measure_atp_kinds` runs them once per batch for
several kinds and dots each gradient with every kind's z' - z (engine.atp_passes: the graph runs
every kind's partner rows); `measure_atp` is its one-kind case.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import xarray as xr
from jaxtyping import Bool, Int
from torch import Tensor
from tqdm.auto import tqdm

from selfrepair.ablations import KINDS, Ablation
from selfrepair.engine.ablation import _pool, check_ablation
from selfrepair.engine.atp_dataset import ChunkResult, atp_dataset
from selfrepair.engine.atp_passes import check_scored, group_batches, pass_groups
from selfrepair.engine.gradients import (
    GradPass,
    frozen_parameters,
    graddrop_estimates,
    head_estimates,
    head_unit_estimates,
    token_estimates,
)
from selfrepair.engine.inputs import TaskInputs, validate_tokens
from selfrepair.engine.metric import Metric
from selfrepair.engine.replacements import replacement_tables
from selfrepair.models.blocks import cached_weights
from selfrepair.models.forward import check_supported

if TYPE_CHECKING:
    from transformer_lens import HookedTransformer

__all__ = [
    "ATP_VARIABLES",
    "check_atp_ablation",
    "chunk_estimates",
    "measure_atp",
    "measure_atp_kinds",
]

ATP_VARIABLES = (
    "atp_row",
    "graddrop_row",
    "atp_top",
    "graddrop_top",
    "atp_token",
    "graddrop_token",
)


def chunk_estimates(
    gp: GradPass,
    dzs: Sequence[dict[int, Tensor]],
    weight: Tensor,
    bar: tqdm,
    graddrop: bool = True,
    top: Tensor | None = None,
    top_graddrop: bool = True,
    per_token: Tensor | None = None,
) -> list[ChunkResult]:
    """One batch's estimates per kind (`dzs`: each kind's z' - z), every backward pass run once
    for all of them: row estimates (one backward, L - 1 more with GradDrop), head units on `top`
    ([layer, head, n, pos] of the batch's own rows: head_unit_estimates) and per-token ones on
    `per_token` ([layer, head, n, pos]: token_estimates, every head at the union of them)."""
    n_layers, n_heads = len(gp.z), gp.z[0].shape[2]
    n = next(iter(dzs[0].values())).shape[0]
    above = list(range(1, n_layers)) if graddrop else []  # GradDrop's passes start there
    grads, output_grads = gp.grads(weight, list(range(n_layers)), above)
    metric = (weight * gp.m.detach()).sum(1)[:n]
    res = [
        ChunkResult(metric, weight.sum(1)[:n], head_estimates(grads, dz, n_layers, n_heads))
        for dz in dzs
    ]
    bar.update(1)
    if graddrop:
        rows = graddrop_estimates(gp, output_grads, dzs, [r.atp_row for r in res])
        for r, drop in zip(res, rows, strict=True):
            r.graddrop_row = drop
        bar.update(n_layers - 1)
    if top is not None:
        for r, (atp, drop) in zip(
            res, head_unit_estimates(gp, dzs, top, top_graddrop), strict=True
        ):
            r.atp_top, r.graddrop_top, r.n_top = atp, drop, top.sum(-1)
        heads = top.flatten(2).any(-1)
        layer = torch.arange(n_layers, device=top.device)[:, None].expand_as(heads)
        bar.update(int(heads.sum()) + top_graddrop * int((n_layers - 1 - layer)[heads].sum()))
    if per_token is not None:
        tokens, passes = token_estimates(gp, dzs, per_token.any((0, 1)), graddrop)
        for r, (atp, drop) in zip(res, tokens, strict=True):
            r.atp_token, r.graddrop_token = atp, drop
        bar.update(passes)
    return res


def measure_atp(
    model: HookedTransformer,
    tokens: Int[Tensor, "rows pos_plus_1"],
    ablation: str = "resample",
    *,
    z_mean: dict[int, Tensor] | None = None,
    **options: Any,
) -> xr.Dataset:
    """measure_atp_kinds of one ablation kind, as its Dataset.

    Args:
        model, tokens: as measure_atp_kinds.
        ablation: a kind of selfrepair.ablations.KINDS.
        z_mean: its table per layer (the mean z) when already computed.
        options: measure_atp_kinds' other keyword arguments (top, per_token, graddrop, ...).
    """
    z_means = None if z_mean is None else {ablation: z_mean}
    return measure_atp_kinds(model, tokens, [ablation], z_means=z_means, **options)[ablation]


def measure_atp_kinds(
    model: HookedTransformer,
    tokens: Int[Tensor, "rows pos_plus_1"],
    ablations: Sequence[str] = ("resample",),
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
    z_means: dict[str, dict[int, Tensor]] | None = None,
    fused: bool = True,
    shared: bool = True,
    progress: bool = False,
    desc: str | None = None,
) -> dict[str, xr.Dataset]:
    """AtP (and GradDrop) estimates of every head's ablation effect on the metric under each
    kind: per row, per row on each head's own tokens (`top`), per token (`per_token`). Only
    z' - z depends on the kind: each batch's forward graph and backward passes serve them all.

    Args:
        model: the HookedTransformer (not modified).
        tokens: [rows, pos + 1] token rows, each starting with BOS.
        ablations: kinds of selfrepair.ablations.KINDS: z' exactly as engine.measure_heads
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
        z_means: per kind, its table per layer when already computed (default: over `tokens`).
        fused: models.blocks' fused forward where it applies; progress, desc: a progress bar
            (one step per backward pass) with this label.
        shared: one graph per batch for all kinds (engine.atp_passes), else one per group of
            kinds that run the same rows (pass_groups); never changes a number.

    Returns:
        Per kind, atp_row (layer, head, batch), graddrop_row (drop_layer, layer, head, batch):
        estimates of the change of each row's metric (sum over its scored positions),
        metric_clean and n_scored (batch); with `top`, atp_top, graddrop_top, n_top (the head's
        tokens in the row), the same over each head's own tokens; with `per_token`, per
        selected (head, token) entry (dim entry, ordered by layer, head, batch, pos):
        atp_token, graddrop_token (drop_layer, entry), the entry's layer, head, batch, pos.
    """
    kinds = _check_kinds(ablations, task)
    check_supported(model)
    validate_tokens(model, tokens, task)
    check_scored(scored, tokens)
    n_rows, n_pos = tokens.shape[0], tokens.shape[1] - 1
    masks = {"top": _mask(model, top, tokens), "per_token": _mask(model, per_token, tokens)}
    batch_size = batch_size or n_rows
    tokens = tokens.to(device=model.W_U.device, dtype=torch.long)
    sources = {name: _pool(tokens, kind, source, task)[2] for name, kind in kinds.items()}
    tables = _tables(model, tokens, kinds, z_means or {}, task, batch_size, mean_include_bos, fused)
    top_graddrop = graddrop if top_graddrop is None else top_graddrop
    bar = tqdm(desc=desc or "AtP", unit="backward", disable=not progress, mininterval=5.0)
    with torch.enable_grad(), frozen_parameters(model), cached_weights():
        parts = {}
        for group in pass_groups(list(kinds), shared):
            batches = group_batches(
                model, tokens, group, sources, tables, metric, task, scored, batch_size, fused
            )
            parts |= _group_estimates(group, batches, masks, bar, graddrop, top_graddrop)
    bar.close()
    return {
        name: atp_dataset(model, parts[name], per_token, name, sources[name], n_rows, n_pos)
        for name in kinds
    }


def _group_estimates(
    group: list[str],
    batches: Iterator[tuple[Tensor, GradPass, list[dict[int, Tensor]], Tensor]],
    masks: dict[str, Tensor | None],
    bar: tqdm,
    graddrop: bool,
    top_graddrop: bool,
) -> dict[str, list[tuple[Tensor, ChunkResult]]]:
    """Per kind of the group, its (rows, ChunkResult) of every batch (engine.atp_passes'
    group_batches), each batch's backward passes run once for all of them."""
    parts = {name: [] for name in group}
    for rows, gp, dzs, weight in batches:
        own = {k: None if v is None else v[:, :, rows] for k, v in masks.items()}
        res = chunk_estimates(
            gp, dzs, weight, bar, graddrop, own["top"], top_graddrop, own["per_token"]
        )
        for name, r in zip(group, res, strict=True):
            parts[name].append((rows, r))
        del gp  # the graph goes before the next batch's is built
    return parts


def _check_kinds(ablations: Sequence[str], task: TaskInputs | None) -> dict[str, Ablation]:
    """check_atp_ablation of each kind, by name: at least one, none twice."""
    if isinstance(ablations, str) or not ablations or len(set(ablations)) != len(ablations):
        raise ValueError(f"ablations must be a list of distinct kinds, got {ablations!r}")
    return {name: check_atp_ablation(name, task) for name in ablations}


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


def _tables(
    model: HookedTransformer,
    tokens: Tensor,
    kinds: dict[str, Ablation],
    given: dict[str, dict[int, Tensor]],
    task: TaskInputs | None,
    batch_size: int,
    mean_include_bos: bool,
    fused: bool,
) -> dict[str, dict[int, Tensor]]:
    """Each kind's table per layer (engine.replacements.replacement_tables: the mean z, minus
    the value bias, the template means) unless given."""
    layers = range(model.cfg.n_layers)
    return {
        name: given[name]
        if name in given
        else replacement_tables(
            model, tokens, kind, layers, batch_size, mean_include_bos, fused, task
        )
        for name, kind in kinds.items()
    }


def _mask(model: HookedTransformer, mask: np.ndarray | None, tokens: Tensor) -> Tensor | None:
    """A [layer, head, rows, pos] token mask as a bool tensor on the model's device."""
    if mask is None:
        return None
    shape = (model.cfg.n_layers, model.cfg.n_heads, tokens.shape[0], tokens.shape[1] - 1)
    if mask.shape != shape:
        raise ValueError(f"token masks must be [layer, head, rows, pos] {shape}, got {mask.shape}")
    return torch.from_numpy(np.ascontiguousarray(mask, bool)).to(model.W_U.device)
