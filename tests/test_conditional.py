"""CoAx's single and conditional ablation effects of each candidate head on a task
(engine.conditional) against full forward passes with hooks (reference.tasks) on tiny random
GPT-2, Pythia and Llama models, and the compensation and amplification ratio by hand."""

from __future__ import annotations

import numpy as np
import pytest
import xarray as xr
from tasks_helpers import padded_task

from selfrepair.analysis.conditional import (
    amplification_ratio,
    candidate_scores,
    conditional_compensation,
)
from selfrepair.analysis.tasks import structurally_zero
from selfrepair.engine.conditional import SET_ALONE, conditional_sets, measure_conditional
from selfrepair.engine.sets import measure_sets
from selfrepair.reference.tasks import TaskReference, reference_conditional

TOL = 1e-4
MEMBERS = [(1, 0), (2, 3)]


@pytest.mark.parametrize(
    "ablation", ["corrupted", "mean", "zero", "zero-with-value-bias", "template-mean"]
)
def test_single_and_conditional_match_full_forward_passes(tiny_model, ablation, one_torch_thread):
    tokens, task = padded_task(tiny_model, seed=5)
    got = measure_conditional(tiny_model, tokens, ablation, MEMBERS, batch_size=2, task=task)
    n_layers, n_heads = tiny_model.cfg.n_layers, tiny_model.cfg.n_heads
    assert got.sizes["candidate"] == n_layers * n_heads - len(MEMBERS)
    ref = TaskReference(tiny_model, tokens, task.counter, task.partners, task.real)
    candidates = list(zip(got.candidate_layer.values, got.candidate_head.values, strict=True))
    expected = reference_conditional(ref, ablation, MEMBERS, candidates)
    for i, u in enumerate(candidates):
        for name in ("single", "conditional"):
            err = np.abs(got[name].values[i] - expected[tuple(u)][name]).max()
            assert err < TOL, (name, u, err)
    # both effects do something, and differ: the set's ablation changes what a head does
    assert float(np.abs(got.single).max()) > 0.05 < float(np.abs(got.conditional).max())
    assert float(np.abs(got.conditional - got.single).max()) > 0.01


def test_conditional_sets_are_the_set_alone_and_with_each_candidate():
    sets = conditional_sets([(1, 0)], [(0, 2), (3, 1)])
    assert sets == {SET_ALONE: [(1, 0)], "L0H2": [(1, 0), (0, 2)], "L3H1": [(1, 0), (3, 1)]}
    with pytest.raises(ValueError, match="candidate L1H0 is in the set; leave it out"):
        conditional_sets([(1, 0)], [(1, 0)])


def test_compensation_and_amplification_by_hand():
    single = np.array([0.5, -0.2, 0.0, 0.001])
    conditional = np.array([1.5, 0.4, 0.3, 0.002])
    assert conditional_compensation(single, conditional) == pytest.approx([1.0, 0.6, 0.3, 0.001])
    # floor 0.01 x 0.5: the third and fourth heads' |single| are below it
    ratio = amplification_ratio(single, conditional)
    assert ratio == pytest.approx([3.0, 2.0, 0.3 / 0.005, 0.002 / 0.005])
    assert amplification_ratio(single, conditional, floor=0.0)[:2] == pytest.approx([3.0, 2.0])
    assert np.isnan(amplification_ratio(np.zeros(2), np.ones(2))).all()
    with pytest.raises(ValueError, match="floor=-1 is negative"):
        amplification_ratio(single, conditional, floor=-1)


def test_candidate_scores_average_the_answers_first():
    ds = xr.Dataset(
        {
            "single": (("candidate", "token"), [[0.1, 0.3], [1.0, 1.0]]),
            "conditional": (("candidate", "token"), [[0.8, 1.2], [1.0, 3.0]]),
        },
        coords={"candidate": ["L1H0", "L2H0"]},
    )
    out = candidate_scores(ds)
    assert out.single.values == pytest.approx([0.2, 1.0])
    assert out.compensation.values == pytest.approx([0.8, 1.0])
    assert out.amplification_ratio.values == pytest.approx([5.0, 2.0])  # ratio of the means


def test_heads_at_or_below_a_sets_first_layer_have_exactly_zero_rise(tiny_model, one_torch_thread):
    """The backup table's joint-set direct-effect rise ties these heads at 0 by construction,
    which is what its ROC-AUC cap (analysis.ranking.best_roc_auc) assumes."""
    tokens, task = padded_task(tiny_model, seed=6)
    sets = {"one": [(0, 2)], "two": [(1, 0), (2, 1)]}
    got = measure_sets(tiny_model, tokens, "corrupted", sets, task=task)
    for name in sets:
        tied = structurally_zero(got, name)
        first = min(la for la, _ in sets[name])
        assert len(tied) == (first + 1) * tiny_model.cfg.n_heads - 1
        assert not got.dde.sel(set=name, component=tied).values.any()
        later = got.dde.sel(set=name, component=f"L{first + 1}H0").values
        assert np.abs(later).max() > 1e-3  # a head above the set does change
