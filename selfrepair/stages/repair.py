"""The who-repairs-whom rules (engine.attribution): head_top_tokens (each head's top tokens,
from the clean cache, before any ablation), repair_summary (the ablate jobs' per-shard sums into
per-(head, component) means, checked to add up to the head's self-repair) and repair_detail
(every component's change of direct effect on each top token of a few heads, for the figures'
intervals and scatter).

head_top_tokens and repair_summary run in the analysis environment (no torch), so the engine is
imported inside repair_detail only."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import xarray as xr

from selfrepair.analysis import attribution
from selfrepair.analysis.attribution import measured_heads
from selfrepair.analysis.clean_layout import merge_top_candidates, shard_candidates
from selfrepair.analysis.from_shards import masked_mean
from selfrepair.analysis.shards import token_dtype
from selfrepair.config.layout import top_count
from selfrepair.stages.joblog import SAME_WEIGHTS_KEYS, provenance, revision_of
from selfrepair.stages.store import (
    DamagedStore,
    check_same_run,
    open_shard_list,
    open_zarr,
    rebuild_hint,
    write_zarr,
)
from selfrepair.stages.summaries import heads_with_picks

if TYPE_CHECKING:
    from selfrepair.stages.job import ModelJob

__all__ = ["detail_heads", "head_top_tokens", "repair_detail", "repair_summary"]

log = logging.getLogger("selfrepair")


def head_top_tokens(
    *,
    shards: Sequence[str],
    top_fraction: float,
    out: str,
    attrs: dict[str, Any],
    heads: Sequence[Sequence[int]] | None = None,
) -> xr.Dataset:
    """Each head's top tokens over all shards, by clean direct effect (the selection
    summarize_heads makes), as global token numbers, so every ablate job of the model can
    sum over exactly them.

    Args:
        shards: the model's clean_cache stores, in shard order.
        top_fraction: engine.top_fraction.
        out: the store to write (results/<model>/attribution/top_tokens.zarr).
        attrs: the rule's provenance attributes.
        heads: the model entry's `heads`, the heads the ablate jobs measure (None: all); the
            others get no top_de_clean (NaN), so a pick never chooses them.
    """
    stores = open_shard_list(shards)
    n_pos = stores[0].sizes["pos"]
    n_tokens = sum(s.sizes["batch"] for s in stores) * n_pos
    k = top_count(n_tokens, top_fraction)
    token, value = merge_top_candidates(
        [shard_candidates(s, k, where=str(p)) for s, p in zip(stores, shards, strict=True)], k
    )
    ds = xr.Dataset(
        {  # row = token // n_pos, position = token % n_pos
            "token": (("layer", "head", "rank"), token.astype(token_dtype(token.max(initial=0)))),
            # what pick_substitute's largest_top_de ranks, before any ablation
            "top_de_clean": (("layer", "head"), masked_mean(value)),
        },
        attrs=provenance(
            **attrs,
            model_revision=revision_of(stores[0]),
            top_fraction=top_fraction,
            n_tokens=n_tokens,
            n_pos=n_pos,
        ),
    )
    ds["top_de_clean"] = ds.top_de_clean.where(measured_heads(heads, token.shape[:2]))
    write_zarr(ds, out)
    return ds


def repair_summary(
    *,
    shards: Sequence[str],
    top_tokens: str,
    out: str,
    attrs: dict[str, Any],
    tolerance: float = 1e-4,
) -> xr.Dataset:
    """Per (ablated head, component) means over all tokens and the head's top tokens, and
    shares of its self-repair (analysis.attribution.repair_summary); refuses to write if the
    shards did not sum over every token and top token once (analysis.attribution.count_problem)
    or the components do not add up to sr_heads + sr_mlps and, with the LayerNorm, to
    self_repair.

    Args:
        shards: the ablate jobs' attribution stores of one (model, ablation).
        top_tokens: the head_top_tokens store the shards summed over.
        out: the store to write (results/<model>/attribution/<ablation>.zarr).
        attrs: the rule's provenance attributes.
        tolerance: the largest |sum of components - total| accepted (logits).
    """
    stores, top = [open_zarr(p) for p in shards], open_zarr(top_tokens)
    check_same_run(shards, stores)
    check_same_run([shards[0], top_tokens], [stores[0], top], SAME_WEIGHTS_KEYS)
    sums = attribution.combine_sums([ds.load() for ds in stores])
    if problem := attribution.count_problem(sums, *attribution.top_counts(top)):
        folder = Path(shards[0]).parent
        raise DamagedStore(f"{folder} is damaged: {problem}; {rebuild_hint(folder)}")
    summary, errors = attribution.checked_repair_summary(sums, tolerance)
    log.info("largest |sum of components - total|: %s", errors)
    summary.attrs = provenance(
        **attrs,
        model_revision=sums.attrs.get("model_revision", ""),
        **{f"max_error_{k}": v for k, v in errors.items()},
    )
    write_zarr(summary, out)
    return summary


def repair_detail(
    job: ModelJob,
    *,
    ablation: str,
    freeze_ln: bool,
    heads: Sequence[Sequence[int]],
    top_tokens: str,
    heads_per_pass: int,
    mean_include_bos: bool,
    out: str,
    attrs: dict[str, Any],
) -> xr.Dataset:
    """Every component's change of direct effect on each top token of a few heads, over every
    shard: storage grows with the heads asked for, never with every head x component x token.

    Args:
        job: the model job over every shard.
        ablation: resample, mean or zero (each shard ablated as its ablate job does).
        freeze_ln: freeze every LayerNorm after the ablated head at its clean scale.
        heads: the (layer, head) pairs to keep.
        top_tokens: the head_top_tokens store.
        heads_per_pass, mean_include_bos: as the ablate rule's.
        out: the store to write (results/<model>/attribution/detail-<ablation>.zarr).
        attrs: the rule's provenance attributes.
    """
    from selfrepair.engine.attribution import RepairSums
    from selfrepair.engine.self_repair import measure_heads

    indices = open_zarr(top_tokens).token.values
    heads = sorted({(int(h[0]), int(h[1])) for h in heads})
    model = None
    parts = []
    for start, rows in job.each_shard():
        model = model or job.model(seq_len=rows.shape[1])
        top = attribution.shard_top_mask(indices, start, rows.shape[0], rows.shape[1] - 1)
        sums = RepairSums(model, top, keep_tokens=True, row_offset=start)
        measure_heads(
            model,
            rows,
            ablation,
            heads=heads,
            batch_size=job.batch_size,
            heads_per_pass=heads_per_pass,
            mean_include_bos=mean_include_bos,
            freeze_ln=freeze_ln,
            progress=True,
            desc=f"detail, rows {start}+",
            sums=sums,
        )
        parts.append(sums.detail_dataset())
    ds = xr.concat(parts, "token")
    ds.attrs.update(job.provenance(attrs), ablation=ablation, heads=[list(h) for h in heads])
    write_zarr(ds, out)
    return ds


def detail_heads(
    heads: Sequence[Sequence[int]], picks: Sequence[str], summary: str, most_repaired: int
) -> list[tuple[int, int]]:
    """The heads repair_detail keeps: the configured ones, those picked at run time (pick
    records), the `most_repaired` heads of the repair summary and the head of the figures'
    per-token pair (analysis.attribution.repair_pair), sorted, without repeats.

    Args:
        heads: the configured heads (config.attribution_heads).
        picks: the pick records of the model's targets.
        summary: the repair_summary store of the detail's ablation.
        most_repaired: how many of the most self-repaired heads to add.
    """
    chosen = set(heads_with_picks(heads, picks))
    repairs = open_zarr(summary)
    chosen.update(attribution.most_repaired(repairs, most_repaired))
    chosen.add(attribution.repair_pair(repairs)[0])
    return sorted(chosen)
