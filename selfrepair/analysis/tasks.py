"""Reductions of the task measurements: per-token stores narrowed to the answer positions, the
clean metric a caption prints (does the model solve the task at all?), the backup-heads table
(for the heads with the largest direct effect on the task, the heads whose direct effect rises
most when each is ablated; for each ablated set, the heads whose direct effect rises most when
the set is ablated jointly, ranked) and how well two rankings find the expected backups
(analysis.ranking).

Neither ranking is CoAx's (Gong 2026, `CoAblation.conditional_compensation` in
src/curvgraph/coablation.py): CoAx scores a head by how much its own ablation effect grows once
the set is gone (conditional - single), a Fisher-weighted centred energy over the vocabulary.
Here a head's score is its change of direct effect, which is exactly 0 for every head at or
below the set's first layer (it reads nothing the set writes): those heads tie, which caps the
ROC-AUC (ranking.best_roc_auc; 0.891 at best for IOI's name movers, 0.859 when every later head
that is not a backup rises above 0).

No I/O and no torch: the analysis environment runs these.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd
import xarray as xr

from selfrepair.analysis.attribution import top_repairers
from selfrepair.analysis.ranking import (
    average_precision,
    best_roc_auc,
    bootstrap_over_prompts,
    precision_at_k,
    roc_auc,
)
from selfrepair.variables import METRIC_LABELS, head_label

__all__ = [
    "CLEAN_METRIC_KEYS",
    "NO_BACKUP_LAST_LAYER",
    "clean_metric_record",
    "clean_metric",
    "head_backups",
    "no_backup_notes",
    "ranking_columns",
    "set_tie_notes",
    "SHARE_LIMIT",
    "SHARE_MIN_SELF_REPAIR",
    "joint_de_rise",
    "scored_tokens",
    "small_self_repair",
    "set_backups",
    "structurally_zero",
    "summed_single_dde",
]

# The task heatmap of who repairs whom: a head's shares divide by its self-repair, so where that
# is near 0 they run to +-7 and more and colour noise. Heads whose |self-repair| on the answers is
# below this fraction of the largest head's are masked (grey), and the colour scale is clipped to
# [-SHARE_LIMIT, SHARE_LIMIT] (the table and the bars give the values).
SHARE_MIN_SELF_REPAIR = 0.1
SHARE_LIMIT = 1.0


def small_self_repair(
    self_repair: xr.DataArray, fraction: float = SHARE_MIN_SELF_REPAIR
) -> xr.DataArray:
    """Per head (layer, head), whether its |self-repair| is below `fraction` of the largest
    |self-repair| of any head (NaN, a head not measured, is not small: it is drawn as such)."""
    size = np.abs(self_repair)
    largest = float(size.max(skipna=True)) if np.isfinite(size).any() else 0.0
    return size < fraction * largest


def scored_tokens(ds: xr.Dataset, scored: np.ndarray) -> xr.Dataset:
    """ds's per-token variables at the answer positions only, on one `token` axis (coordinates
    prompt and position, and a resample ablation's partner `resample_source`: the prompt each
    token's z came from), in prompt order; variables without batch and pos stay as they are.

    Args:
        ds: dims batch (the prompts) and pos, among others.
        scored: bool [prompt, pos], the answer positions.
    """
    prompt, position = np.nonzero(scored)
    picked = ds.isel(
        batch=xr.DataArray(prompt, dims="token"), pos=xr.DataArray(position, dims="token")
    )
    picked = picked.drop_vars(["batch", "pos"], errors="ignore")
    return picked.assign_coords(prompt=("token", prompt), position=("token", position))


# The keys of a task's clean metric (clean_metric's, in its order; an induction task's per-head
# scores last), which clean_cache records in its store's provenance and task_metric writes.
CLEAN_METRIC_KEYS = ("metric", "label", "mean", "top1", "loss_answers", "n_prompts", "n_answers")
CLEAN_METRIC_KEYS += ("above_counterfactual", "loss_baseline", "top1_baseline", "induction_scores")


def clean_metric_record(attrs: dict) -> dict:
    """A task's clean metric (CLEAN_METRIC_KEYS, in order) from its clean store's attributes."""
    return {key: attrs[key] for key in CLEAN_METRIC_KEYS if key in attrs}


def clean_metric(
    logit: np.ndarray,
    top1: np.ndarray,
    loss: np.ndarray,
    scored: np.ndarray,
    baseline: np.ndarray,
    metric: str,
) -> dict[str, float | int | str]:
    """What the clean model does on the task, over its answer positions: the mean metric, the
    share of answers that are its top prediction, with logit_diff the share above the
    counterfactual, and the mean loss there; on the baseline positions (if any) the mean loss
    and the top-1 share too (induction: the first copy, which no copying can predict, against
    the repeat).

    Args:
        logit, top1, loss: the clean cache's logit_clean, top1 and loss [prompt, pos].
        scored, baseline: bool [prompt, pos], the answer and baseline positions.
        metric: correct_logit or logit_diff.
    """
    out: dict[str, float | int | str] = {
        "metric": metric,
        "label": METRIC_LABELS[metric],
        "mean": float(logit[scored].mean()),
        "top1": float(top1[scored].mean()),
        "loss_answers": float(loss[scored].mean()),
        "n_prompts": int(scored.shape[0]),
        "n_answers": int(scored.sum()),
    }
    if metric == "logit_diff":
        out["above_counterfactual"] = float((logit[scored] > 0).mean())
    if baseline.any():
        out["loss_baseline"] = float(loss[baseline].mean())
        out["top1_baseline"] = float(top1[baseline].mean())
    return out


def _head_names(component: xr.DataArray, kinds: xr.DataArray) -> list[str]:
    return [str(c) for c, k in zip(component.values, kinds.values, strict=True) if k == "head"]


def joint_de_rise(sets: xr.Dataset, name: str) -> dict[str, float]:
    """The joint-set direct-effect rise: each head outside the set, its mean change of direct
    effect over the answers when the set is ablated jointly (not CoAx's score, which is the
    growth of a head's own ablation effect; exactly 0 for heads at or below the set's first
    layer, structurally_zero)."""
    one = sets.sel(set=name)
    members = {head_label(*h) for h in sets.attrs["sets"][name]}
    mean = one.dde.mean("token")
    names = _head_names(one.component, one.component_kind)
    return {c: float(mean.sel(component=c)) for c in names if c not in members}


def summed_single_dde(repairs: xr.Dataset, members: Sequence[Sequence[int]]) -> dict[str, float]:
    """Each head outside the set: the sum, over the set's heads ablated one at a time, of its
    mean change of direct effect (0 where it does not read the head). Not CoAx's single
    ablation, which is the head's own ablation effect in the intact model."""
    labels = {head_label(*h) for h in members}
    names = _head_names(repairs.component, repairs.component_kind)
    total = sum(repairs.top_dde.sel(layer=h[0], head=h[1]).fillna(0.0) for h in members)
    return {c: float(total.sel(component=c)) for c in names if c not in labels}


def structurally_zero(sets: xr.Dataset, name: str) -> list[str]:
    """The heads outside the set at or below its first layer: they read nothing the set
    writes, so both joint_de_rise and summed_single_dde give them exactly 0 (a tie)."""
    members = {head_label(*h) for h in sets.attrs["sets"][name]}
    first = min(int(h[0]) for h in sets.attrs["sets"][name])
    kinds, layers = sets.component_kind.values, sets.component_layer.values
    return [
        str(c)
        for c, k, la in zip(sets.component.values, kinds, layers, strict=True)
        if k == "head" and la <= first and str(c) not in members
    ]


def ranking_columns(
    scores: Mapping[str, float], expected: Sequence[str], tied: Sequence[str], suffix: str
) -> dict[str, float]:
    """ROC-AUC, average precision and precision@k (k: the expected backups scored) of one
    ranking, named <metric>_<suffix>, and roc_auc_cap: the best ROC-AUC any score can reach
    when the `tied` candidates share one score (ranking.best_roc_auc)."""
    positives = [c for c in expected if c in scores]
    k = len(positives)
    tied_pos = sum(c in positives for c in tied if c in scores)
    tied_all = sum(c in scores for c in tied)
    n_neg = len(scores) - k
    return {
        f"roc_auc_{suffix}": roc_auc(scores, positives),
        f"average_precision_{suffix}": average_precision(scores, positives),
        f"precision_at_k_{suffix}": precision_at_k(scores, positives, k) if k else np.nan,
        "roc_auc_cap": best_roc_auc(k, n_neg, tied_pos, tied_all - tied_pos),
    }


def _role_of(roles: Mapping[str, Sequence[Sequence[int]]]) -> dict[str, str]:
    """Head label -> its roles, joined by '; ' in the order given."""
    out: dict[str, list[str]] = {}
    for role, heads in roles.items():
        for h in heads:
            out.setdefault(head_label(*h), []).append(role)
    return {label: "; ".join(names) for label, names in out.items()}


# Why a head among the largest has no backup rows: no head reads its output.
NO_BACKUP_LAST_LAYER = (
    "in the last layer: no head is downstream of it, so none can repair it (its backup columns "
    "are empty)"
)


def head_backups(
    summary: xr.Dataset,
    repairs: xr.Dataset,
    n_heads: int,
    n_backups: int,
    roles: Mapping[str, Sequence[Sequence[int]]],
) -> pd.DataFrame:
    """For the n_heads measured heads with the largest mean direct effect on the answers, the
    n_backups heads whose direct effect rises most when each is ablated alone. A head none can
    repair (a last-layer head: nothing downstream) keeps one row with empty backup columns and
    the reason in `note`, so that the table lists every one of the n_heads.

    Args:
        summary: the task's per-head summary (summarize over the answers).
        repairs: its repair summary (per ablated head and component).
        n_heads, n_backups: rows of the table.
        roles: role -> heads, named in the table.
    """
    de = summary.mean_de_clean.values
    order = np.argsort(-np.where(np.isnan(de), -np.inf, de), axis=None, kind="stable")
    ranked = [np.unravel_index(i, de.shape) for i in order if np.isfinite(de.flat[i])]
    role = _role_of(roles)
    last = int(summary["layer"].values.max())
    rows = []
    for layer, head in ranked[:n_heads]:
        layer, head = int(summary["layer"].values[layer]), int(summary["head"].values[head])
        one = summary.sel(layer=layer, head=head)
        drop = float(one.mean_de_clean - one.mean_de_ablated)
        ablated = {
            "ablated": head_label(layer, head),
            "ablated_role": role.get(head_label(layer, head), ""),
            "de_clean": float(one.mean_de_clean),
            "de_drop": drop,
            "metric_drop": -float(one.mean_logit_diff),
            "self_repair": float(one.mean_self_repair),
        }
        backups = top_repairers(repairs, (layer, head), n_backups, kinds=("head",))
        for backup in backups:
            dde = float(repairs.top_dde.sel(layer=layer, head=head, component=backup))
            rows.append(
                ablated
                | {
                    "backup": backup,
                    "backup_role": role.get(backup, ""),
                    "backup_dde": dde,
                    "share_of_de_drop": dde / drop if drop else float("nan"),
                    "note": "",
                }
            )
        if not backups:
            reason = NO_BACKUP_LAST_LAYER if layer == last else "no head downstream was measured"
            empty = {"backup": "", "backup_role": "", "backup_dde": np.nan}
            rows.append(ablated | empty | {"share_of_de_drop": np.nan, "note": reason})
    return pd.DataFrame(rows)


def no_backup_notes(table: pd.DataFrame) -> list[str]:
    """A sentence for each head of a head_backups table that has no backup rows, and why."""
    if "note" not in table:
        return []
    empty = table[table.note != ""]
    return [f"{row.ablated} has no backup heads: {row.note}." for row in empty.itertuples()]


def _joint_interval(
    one: xr.Dataset, heads: list[str], expected: list[str], bootstrap: Mapping[str, Any]
) -> dict[str, float]:
    """The joint ranking's ROC-AUC interval with the prompts resampled (bootstrap_over_prompts)."""
    per_token = one.dde.sel(component=heads).transpose("token", "component").values
    positives = [c for c in expected if c in heads]
    if not positives or len(positives) == len(heads):  # no ROC-AUC to resample
        return {"roc_auc_joint_de_rise_low": np.nan, "roc_auc_joint_de_rise_high": np.nan}
    low, high = bootstrap_over_prompts(
        per_token, one.prompt.values, heads, positives, roc_auc, **bootstrap
    )
    return {"roc_auc_joint_de_rise_low": low, "roc_auc_joint_de_rise_high": high}


def set_backups(
    sets: xr.Dataset,
    repairs: xr.Dataset,
    expected: Sequence[Sequence[int]],
    n_backups: int,
    roles: Mapping[str, Sequence[Sequence[int]]],
    bootstrap: Mapping[str, Any] | None = None,
) -> pd.DataFrame:
    """Per jointly ablated set: the heads whose direct effect rises most (joint_de_rise), with
    the set's own drops, whether each head is an expected backup, and ranking_columns against
    the expected backups of that ranking (joint_de_rise) and of the summed single-head
    ablations (summed_single_dde), with the cap the heads tied at 0 leave (roc_auc_cap).
    With `bootstrap` (n_resamples, level, seed), the joint ranking's ROC-AUC gets a percentile
    interval over the prompts (roc_auc_joint_de_rise_low, _high)."""
    expected_labels = [head_label(*h) for h in expected]
    role = _role_of(roles)
    rows = []
    for name in [str(s) for s in sets.set.values]:
        one = sets.sel(set=name).mean("token")
        joint = joint_de_rise(sets, name)
        single = summed_single_dde(repairs, sets.attrs["sets"][name])
        tied = structurally_zero(sets, name)
        ranks = ranking_columns(single, expected_labels, tied, "summed_single_dde")
        ranks |= ranking_columns(joint, expected_labels, tied, "joint_de_rise")
        ranks["tied_at_zero"] = len(tied)
        if bootstrap is not None:
            ranks |= _joint_interval(sets.sel(set=name), list(joint), expected_labels, bootstrap)
        ranked = sorted(joint, key=lambda c: (-joint[c], c))
        for rank, head in enumerate(ranked[:n_backups], 1):
            rows.append(
                {
                    "set": name,
                    "set_heads": ", ".join(head_label(*h) for h in sets.attrs["sets"][name]),
                    "de_clean": float(one.de_clean),
                    "de_drop": float(one.de_clean - one.de_ablated),
                    "metric_drop": -float(one.logit_diff),
                    "self_repair": float(one.self_repair),
                    "rank": rank,
                    "backup": head,
                    "backup_role": role.get(head, ""),
                    "expected_backup": head in expected_labels,
                    "backup_dde": joint[head],
                    "summed_single_dde": single[head],
                }
                | ranks
            )
    return pd.DataFrame(rows)


def set_tie_notes(table: pd.DataFrame) -> list[str]:
    """A sentence for each set of a set_backups table: how many heads its scores tie at 0 (at
    or below the set's first layer) and the best ROC-AUC those ties leave."""
    firsts = table.drop_duplicates("set")
    return [
        f"Set {row.set}: {row.tied_at_zero} heads at or below its first layer score exactly 0 "
        f"under both rankings (they read nothing the set writes), so neither ranking can reach "
        f"a ROC-AUC above {row.roc_auc_cap:.3f}."
        for row in firsts.itertuples()
    ]
