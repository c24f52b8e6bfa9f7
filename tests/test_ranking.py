"""The ranking metrics (selfrepair.analysis.ranking) against hand computations on small rankings
with ties, the ROC-AUC cap of tied candidates, and the bootstrap over prompts against a slow
loop."""

from __future__ import annotations

import numpy as np
import pytest

from selfrepair.analysis.intervals import resample_draws
from selfrepair.analysis.ranking import (
    average_precision,
    best_roc_auc,
    bootstrap_over_prompts,
    precision_at_k,
    roc_auc,
)

# b and c tie at 2; positives b and d
SCORES = {"a": 3.0, "b": 2.0, "c": 2.0, "d": 1.0, "e": 0.0}
POSITIVES = ["b", "d"]


def test_roc_auc_counts_a_tied_pair_half():
    # b beats e, ties c (a half), loses to a; d beats e only: 2.5 of 6 pairs
    assert roc_auc(SCORES, POSITIVES) == pytest.approx(2.5 / 6)
    assert roc_auc(dict.fromkeys("abcde", 0.0), POSITIVES) == 0.5


def test_average_precision_lets_tied_candidates_pass_their_threshold_together():
    # thresholds 3 (a: recall 0), 2 (a b c: recall 1/2, precision 1/3), 1 (recall 1, precision
    # 2/4), 0 (no recall gained): 1/2 * 1/3 + 1/2 * 1/2
    assert average_precision(SCORES, POSITIVES) == pytest.approx(1 / 6 + 1 / 4)
    # b before c would give 1/2 * 1/2 + 1/2 * 2/4, c before b 1/2 * 1/3 + ...: the tie is one step
    assert average_precision(dict.fromkeys("abcde", 0.0), POSITIVES) == pytest.approx(2 / 5)
    assert average_precision({"a": 1.0, "b": 0.0}, ["a"]) == 1.0
    assert np.isnan(average_precision(SCORES, []))


def test_precision_at_k_counts_the_tie_at_the_kth_at_its_share_of_positives():
    # k=1: a. k=2: a, then one of the tie b c (half a positive). k=3: a b c. k=4: a b c d.
    got = [precision_at_k(SCORES, POSITIVES, k) for k in range(1, 6)]
    assert got == pytest.approx([0.0, 0.5 / 2, 1 / 3, 2 / 4, 2 / 5])
    assert precision_at_k(dict.fromkeys("abcde", 0.0), POSITIVES, 2) == pytest.approx(2 / 5)
    with pytest.raises(ValueError, match="k=6 is not between 1 and the 5 candidates"):
        precision_at_k(SCORES, POSITIVES, 6)


def test_nan_scores_are_refused_by_name():
    for metric in (roc_auc, average_precision):
        with pytest.raises(ValueError, match="scores of c are NaN"):
            metric(SCORES | {"c": float("nan")}, POSITIVES)


def test_best_roc_auc_is_reached_by_the_best_arrangement():
    # 3 positives (1 tied), 5 negatives (2 tied, 1 free one above the tie, 2 below)
    best = {"p1": 9.0, "p2": 9.0, "p3": 0.0, "n1": 0.0, "n2": 0.0, "n3": 5.0, "n4": -1, "n5": -2}
    got = best_roc_auc(3, 5, 1, 2, negatives_above=1)
    assert got == pytest.approx(1 - (0.5 * 1 * 2 + 1 * 1) / 15)
    assert got == pytest.approx(roc_auc(best, ["p1", "p2", "p3"]))
    assert best_roc_auc(3, 5, 0, 2) == 1.0
    with pytest.raises(ValueError, match="inconsistent"):
        best_roc_auc(3, 5, 4, 2)


def test_best_roc_auc_of_iois_name_movers():
    # gpt2-small, the set {L9H9, L9H6, L10H0}: 141 candidates, 8 expected backups; at or below
    # layer 9, 118 heads tie at 0, among them L9H0 and L9H7 (2 positives, 116 negatives). Of
    # the 23 later heads, 6 are backups and 17 are not.
    assert best_roc_auc(8, 133, 2, 116) == pytest.approx(1 - 58 / 532)  # 0.891
    # the "about 0.86": when the 17 later non-backups all rise above 0
    assert best_roc_auc(8, 133, 2, 116, negatives_above=17) == pytest.approx(0.859, abs=1e-3)


def test_bootstrap_over_prompts_equals_a_slow_loop():
    rng = np.random.default_rng(0)
    prompt = np.array([0, 0, 0, 1, 2, 2, 3, 4, 4, 4])  # prompts of 1 to 3 answers
    per_token = rng.normal(size=(prompt.size, 6))
    names = [f"h{i}" for i in range(6)]
    pos = ["h1", "h4"]
    got = bootstrap_over_prompts(per_token, prompt, names, pos, roc_auc, 200, 0.9, seed=3)
    values = []
    for draws in resample_draws(5, 200, 3):
        for draw in draws:
            rows = np.concatenate([np.flatnonzero(prompt == p) for p in draw])
            values.append(roc_auc(dict(zip(names, per_token[rows].mean(0), strict=True)), pos))
    assert got == pytest.approx(tuple(np.quantile(values, [0.05, 0.95])))
    assert got[0] <= roc_auc(dict(zip(names, per_token.mean(0), strict=True)), pos) <= got[1]
