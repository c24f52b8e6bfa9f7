"""How well a score ranks the expected heads first: ROC-AUC, average precision, precision@k,
the best ROC-AUC a score can reach when some candidates are tied by construction, and a
bootstrap interval over prompts.

Every function takes scores as candidate -> value (higher: more likely a positive) and the
positives as names; positives not among the scores are ignored. Ties are part of each
definition (a score that is exactly 0 for every head upstream of an ablated set ties them all):

- roc_auc: the Mann-Whitney statistic, a tied (positive, negative) pair counts half.
- average_precision: scikit-learn's `average_precision_score`, sum_n (R_n - R_(n-1)) P_n over
  the distinct score values in falling order: tied candidates pass their threshold together.
- precision_at_k: the expected precision of the first k under a uniformly random order of the
  candidates tied at the k-th score.

No I/O and no torch: the analysis environment runs these.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import numpy as np

from selfrepair.analysis.intervals import percentile_interval, resample_draws

__all__ = [
    "average_precision",
    "best_roc_auc",
    "bootstrap_over_prompts",
    "precision_at_k",
    "roc_auc",
]


def _split(scores: Mapping[str, float], positives: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """The scores as an array and whether each is a positive; NaN scores are refused (NaN
    compares false to everything, so it would silently rank as neither above nor below)."""
    values = np.array(list(scores.values()), float)
    if np.isnan(values).any():
        bad = [k for k, v in scores.items() if np.isnan(v)]
        raise ValueError(f"scores of {', '.join(bad[:5])} are NaN: give every candidate a score")
    wanted = set(positives)
    return values, np.array([k in wanted for k in scores], bool)


def roc_auc(scores: Mapping[str, float], positives: Sequence[str]) -> float:
    """Share of (positive, other) pairs the scores rank the right way round, a tie counting
    half (Mann-Whitney U / (P N)): the ROC-AUC of ranking the positives first. NaN without a
    positive or another.

    Args:
        scores: candidate -> score (higher: more likely a positive).
        positives: the candidates expected first (those not among scores are ignored).
    """
    values, is_pos = _split(scores, positives)
    pos, neg = values[is_pos], values[~is_pos]
    if not pos.size or not neg.size:
        return float("nan")
    above = (pos[:, None] > neg[None, :]).sum() + 0.5 * (pos[:, None] == neg[None, :]).sum()
    return float(above / (pos.size * neg.size))


def average_precision(scores: Mapping[str, float], positives: Sequence[str]) -> float:
    """scikit-learn's average precision: sum over the distinct score values t, highest first,
    of (recall at t - recall at the previous value) x precision at t, where "at t" counts every
    candidate scoring >= t (tied candidates enter together). NaN without a positive.

    Args:
        scores, positives: as roc_auc.
    """
    values, is_pos = _split(scores, positives)
    if not is_pos.any():
        return float("nan")
    levels, group = np.unique(-values, return_inverse=True)  # highest score first
    tp = np.cumsum(np.bincount(group, weights=is_pos, minlength=levels.size))
    seen = np.cumsum(np.bincount(group, minlength=levels.size))
    recall_step = np.diff(tp, prepend=0.0) / is_pos.sum()
    return float((recall_step * tp / seen).sum())


def precision_at_k(scores: Mapping[str, float], positives: Sequence[str], k: int) -> float:
    """Share of positives among the k best-scored candidates; where candidates tie at the
    k-th score, those of them that enter the first k are a uniformly random draw, so they count
    at their group's share of positives (the expectation over the orders of the tie).

    Args:
        scores, positives: as roc_auc.
        k: how many candidates are taken, 1 <= k <= len(scores).
    """
    values, is_pos = _split(scores, positives)
    if not 1 <= k <= values.size:
        raise ValueError(f"k={k} is not between 1 and the {values.size} candidates scored")
    kth = np.sort(values)[::-1][k - 1]
    above, tied = values > kth, values == kth
    from_tie = k - above.sum()
    return float((is_pos[above].sum() + from_tie * is_pos[tied].mean()) / k)


def best_roc_auc(
    n_positives: int,
    n_negatives: int,
    tied_positives: int,
    tied_negatives: int,
    negatives_above: int = 0,
) -> float:
    """The highest ROC-AUC a score can reach when tied_positives + tied_negatives candidates
    must share one score (e.g. 0 for every head at or below an ablated set's first layer: it
    reads nothing the set writes) and the others may score anything: the free positives first,
    each tied pair counting half, and `negatives_above` free negatives that rank above the tie
    (0: the best case; all free negatives: when every free candidate outscores the tie).

        1 - (tied_positives * tied_negatives / 2 + tied_positives * negatives_above) / (P N)

    Args:
        n_positives, n_negatives: P and N, all candidates.
        tied_positives, tied_negatives: how many of each share the one score.
        negatives_above: free negatives ranked above the tie.
    """
    free_negatives = n_negatives - tied_negatives
    counts = (n_positives, n_negatives, tied_positives, tied_negatives, negatives_above)
    if min(counts) < 0 or tied_positives > n_positives or negatives_above > free_negatives:
        raise ValueError(f"counts {counts} are inconsistent: ties and those above are a subset")
    if not n_positives or not n_negatives:
        return float("nan")
    lost = 0.5 * tied_positives * tied_negatives + tied_positives * negatives_above
    return 1.0 - lost / (n_positives * n_negatives)


def bootstrap_over_prompts(
    per_token: np.ndarray,
    prompt: np.ndarray,
    candidates: Sequence[str],
    positives: Sequence[str],
    statistic: Callable[[Mapping[str, float], Sequence[str]], float],
    n_resamples: int,
    level: float,
    seed: int,
) -> tuple[float, float]:
    """Percentile interval of a ranking statistic when the prompts are resampled with
    replacement: each resample's score of a candidate is its mean over the tokens of the drawn
    prompts (a prompt drawn twice counts twice), the statistic is computed on those scores.

    Args:
        per_token: [token, candidate] each candidate's score on each scored token.
        prompt: [token] the prompt each token belongs to.
        candidates: the candidates' names, in per_token's column order.
        positives, statistic: e.g. the expected backups and roc_auc.
        n_resamples, level, seed: as figures.bootstrap (resample_draws' seeding).
    """
    ids, token_prompt = np.unique(np.asarray(prompt), return_inverse=True)
    # per prompt: the sum over its tokens and how many it has, so a draw is two matrix products
    sums = np.zeros((ids.size, per_token.shape[1]))
    np.add.at(sums, token_prompt, per_token)
    sizes = np.bincount(token_prompt, minlength=ids.size).astype(float)
    values = []
    for draws in resample_draws(ids.size, n_resamples, seed):
        counts = np.stack([np.bincount(d, minlength=ids.size) for d in draws]).astype(float)
        means = (counts @ sums) / (counts @ sizes)[:, None]
        values += [statistic(dict(zip(candidates, row, strict=True)), positives) for row in means]
    low, high = percentile_interval(np.array(values)[None], level)[0]
    return float(low), float(high)
