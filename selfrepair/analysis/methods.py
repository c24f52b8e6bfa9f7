"""The method comparison: each method's score of every candidate head from the per-answer values
of engine.methods and engine.methods_grad, and how well each ranks the expected backups first
(ROC-AUC, average precision, precision@k, a bootstrap interval over prompts), CoAx's published
ROC-AUCs beside them (Gong 2026, release 2.1.0, results/reference_metrics.json).

Scores as CoAx's experiments/paper/backup_recovery_full.py forms them, per form (energy,
logit_diff): single (mean over answers), conditional, compensation = conditional - single
(`CoAblation.conditional_compensation`), amplification ratio (energy: conditional / single
where single > 0, else 0, as CoAx's NaN to 0; logit_diff: analysis.conditional's, divided by
max(|single|, floor)); the conditional gradient and AtP: the mean of |estimate| over answers
(baselines.conditional_attribution_patching, head_attribution_patching); EAP-IG: |mean signed
estimate| (baselines.integrated_gradient_attribution).

Scores of other stores (e.g. AtP* GradDrop of the atp rules on tasks) join through
`with_extra_scores`. No I/O and no torch.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import numpy as np
import pandas as pd

from selfrepair.analysis import tables
from selfrepair.analysis.conditional import amplification_ratio
from selfrepair.analysis.intervals import percentile_interval, resample_draws
from selfrepair.analysis.ranking import average_precision, precision_at_k, roc_auc

__all__ = [
    "COAX_ROC_AUC",
    "PER_TOKEN",
    "energy_ratio",
    "method_page",
    "method_scores",
    "method_table",
    "prompts_note",
    "std_text",
    "with_extra_scores",
]

# Per-answer values averaged before a method's score is formed (|.| taken per answer first
# for the gradients CoAx takes per example); with the task's AtP store, also
# `atp_star_graddrop`, AtP*'s GradDrop per answer, already a magnitude.
PER_TOKEN = (
    "single_energy",
    "conditional_energy",
    "single_logit_diff",
    "conditional_logit_diff",
    "abs_conditional_gradient",
    "abs_atp",
    "eap_ig",
)

# CoAx's ROC-AUC per method of this table (release 2.1.0, results/reference_metrics.json:
# gpt2-small, IOI, 96 prompts x seeds 1, 15, 22, 8, last position, energy form, zero ablation).
COAX_ROC_AUC = {
    "amplification_ratio_energy": 0.984,
    "compensation_energy": 0.941,
    "conditional_gradient": 0.767,
    "conditional_energy": 0.758,
    "atp_star_graddrop": 0.665,
    "atp": 0.650,
    "single_energy": 0.603,
    "eap_ig": 0.581,
}


def energy_ratio(single: np.ndarray, conditional: np.ndarray) -> np.ndarray:
    """CoAx's amplification ratio of energies: conditional / single where single > 0, else 0."""
    single, conditional = np.asarray(single, float), np.asarray(conditional, float)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(single > 0, conditional / np.where(single > 0, single, 1.0), 0.0)


def method_scores(means: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Each method's score [candidate] from the means over answers of PER_TOKEN's values
    (module docstring); higher: more likely a backup."""
    out: dict[str, np.ndarray] = {}
    for form in ("energy", "logit_diff"):
        single, cond = means[f"single_{form}"], means[f"conditional_{form}"]
        out[f"single_{form}"] = single
        out[f"conditional_{form}"] = cond
        out[f"compensation_{form}"] = cond - single
    out["amplification_ratio_energy"] = energy_ratio(
        means["single_energy"], means["conditional_energy"]
    )
    ratio = amplification_ratio(means["single_logit_diff"], means["conditional_logit_diff"])
    out["amplification_ratio_logit_diff"] = np.nan_to_num(ratio, nan=0.0)
    out["conditional_gradient"] = means["abs_conditional_gradient"]
    out["atp"] = means["abs_atp"]
    out["eap_ig"] = np.abs(means["eap_ig"])
    if "atp_star_graddrop" in means:  # joined from a task_atp store (stages.methods)
        out["atp_star_graddrop"] = means["atp_star_graddrop"]
    return out


def _prompt_sums(per_token: Mapping[str, np.ndarray], prompt: np.ndarray):
    ids, which = np.unique(np.asarray(prompt), return_inverse=True)
    sums = {}
    for name, values in per_token.items():  # [candidate, token]
        s = np.zeros((ids.size, values.shape[0]))
        np.add.at(s, which, np.asarray(values, float).T)
        sums[name] = s
    return ids.size, sums, np.bincount(which, minlength=ids.size).astype(float)


def _metrics(scores: Mapping[str, float], positives: Sequence[str], k: int) -> dict[str, float]:
    return {
        "roc_auc": roc_auc(scores, positives),
        "average_precision": average_precision(scores, positives),
        "precision_at_k": precision_at_k(scores, positives, k),
    }


def with_extra_scores(
    scores: Mapping[str, Mapping[str, float]], extra: Mapping[str, Mapping[str, float]]
) -> dict[str, dict[str, float]]:
    """The methods' scores (method -> candidate -> score) with other stores' methods joined,
    each over the same candidates (a candidate missing from an extra method is refused: it would
    change who is ranked)."""
    out = {m: dict(s) for m, s in scores.items()}
    wanted = set(next(iter(out.values()))) if out else set()
    for method, values in extra.items():
        if missing := sorted(wanted - set(values)):
            raise ValueError(f"extra method {method} lacks candidates {', '.join(missing[:5])}")
        out[method] = {c: float(values[c]) for c in next(iter(out.values()))}
    return out


def method_table(
    per_token: Mapping[str, np.ndarray],
    prompt: np.ndarray,
    candidates: Sequence[str],
    positives: Sequence[str],
    *,
    n_resamples: int,
    level: float,
    seed: int,
    extra: Mapping[str, Mapping[str, float]] | None = None,
    score: Callable[[Mapping[str, np.ndarray]], dict[str, np.ndarray]] = method_scores,
) -> pd.DataFrame:
    """One row per method: roc_auc with its bootstrap interval over prompts (roc_auc_low,
    roc_auc_high; each resample's scores formed from the drawn prompts' means), average
    precision, precision@k (k: the positives among the candidates), n_prompts (the prompts
    measured: those of `prompt`), coax_roc_auc (CoAx's value where it has the method, else NaN).
    Extra methods carry no interval (NaN).

    Args:
        per_token: PER_TOKEN's values, each [candidate, token].
        prompt: [token] the prompt of each answer.
        candidates: the candidates' names, in per_token's order.
        positives: the expected backups.
        n_resamples, level, seed: as figures.bootstrap.
        extra: method -> candidate -> score, from other stores.
        score: the scores from the means (default method_scores).
    """
    n_prompts, sums, sizes = _prompt_sums(per_token, prompt)
    means = {name: s.sum(0) / sizes.sum() for name, s in sums.items()}
    point = {m: dict(zip(candidates, v, strict=True)) for m, v in score(means).items()}
    point = with_extra_scores(point, extra or {})
    k = max(1, len(set(positives) & set(candidates)))
    draws: dict[str, list[float]] = {m: [] for m in point}
    for batch in resample_draws(n_prompts, n_resamples, seed):
        for d in batch:
            counts = np.bincount(d, minlength=n_prompts).astype(float)
            drawn = {name: counts @ s / (counts @ sizes) for name, s in sums.items()}
            for m, v in score(drawn).items():
                draws[m].append(roc_auc(dict(zip(candidates, v, strict=True)), positives))
    rows = []
    for method, scores in point.items():
        row = {"method": method, **_metrics(scores, positives, k), "k": k, "n_prompts": n_prompts}
        if draws.get(method):
            low, high = percentile_interval(np.array(draws[method])[None], level)[0]
        else:
            low = high = float("nan")
        row |= {"roc_auc_low": low, "roc_auc_high": high}
        row["coax_roc_auc"] = COAX_ROC_AUC.get(method, float("nan"))
        rows.append(row)
    return pd.DataFrame(rows).set_index("method")


def std_text(value: float) -> str:
    """A standard deviation as a page shows it: two significant figures, so a small nonzero
    one reads as itself (0.00047) where three decimals showed 0.000."""
    return f"{value:#.2g}"


def prompts_note(counts: int | Mapping[int, int]) -> str:
    """The line above a method table saying what it was measured on: its prompt count, or each
    prompt seed's (seed -> count; one number where the seeds' agree)."""
    if isinstance(counts, int):
        return f"Measured on {counts} prompts."
    seeds = ", ".join(map(str, counts))
    if len(set(counts.values())) == 1:
        return f"Measured on {next(iter(counts.values()))} prompts per seed (seeds {seeds})."
    return "Measured on " + ", ".join(f"{n} prompts (seed {s})" for s, n in counts.items()) + "."


def method_page(table: pd.DataFrame, *, title: str, note: str) -> str:
    """A method table as an HTML page: its title, `note` (prompts_note) and the table, floats
    to three decimals, each standard deviation (a `*_std` column) by std_text; NaN as NaN."""
    stds = {c: std_text for c in table.columns if str(c).endswith("_std")}
    body = table.to_html(float_format=lambda v: f"{v:.3f}", formatters=stds)
    return tables.html_page(title, note, [body])
