"""The method comparison's scores (engine.methods, engine.methods_grad) against independent
references on tiny random GPT-2, Pythia and Llama models: CoAx's single and conditional effects
in energy and logit-difference form against full forward passes with hooks (reference.methods),
the conditional gradient, AtP and EAP-IG (5 steps) against autograd on Hugging Face
`transformers`' own models; and the table's scores from them by hand."""

from __future__ import annotations

import re

import numpy as np
import pandas as pd
import pytest
import torch
from tasks_helpers import padded_task
from test_architectures import hf_checkpoint

from selfrepair.analysis.methods import (
    PER_TOKEN,
    energy_ratio,
    method_page,
    method_scores,
    method_table,
    prompts_note,
    std_text,
    with_extra_scores,
)
from selfrepair.engine.inputs import TaskInputs
from selfrepair.engine.methods import fisher_energy, measure_methods
from selfrepair.engine.methods_grad import answer_groups, measure_gradient_methods
from selfrepair.models.loading import load_local_checkpoint
from selfrepair.reference.methods import hf_gradient_methods, reference_energies
from selfrepair.reference.tasks import TaskReference

pytestmark = pytest.mark.usefixtures("one_torch_thread")

TOL = 1e-4
MEMBERS = [(1, 0), (2, 3)]
STEPS = 5  # CoAx's EAP-IG step count (baselines.integrated_gradient_attribution)


def answers(tokens, real, seed=0):
    """A random scored mask inside the real positions, two answers in some rows."""
    rng = np.random.default_rng(seed)
    predicts = real[:, 1:].cpu().numpy()
    return predicts & (rng.random(predicts.shape) < 0.25)


@pytest.mark.parametrize(
    "ablation", ["corrupted", "mean", "zero", "zero-with-value-bias", "template-mean"]
)
def test_energy_and_logit_diff_effects_match_full_forward_passes(tiny_model, ablation):
    tokens, task = padded_task(tiny_model, seed=5)
    scored = answers(tokens, task.real)
    got = measure_methods(tiny_model, tokens, ablation, MEMBERS, scored, batch_size=2, task=task)
    ref = TaskReference(tiny_model, tokens, task.counter, task.partners, task.real)
    candidates = list(zip(got.candidate_layer.values, got.candidate_head.values, strict=True))
    expected = reference_energies(ref, ablation, MEMBERS, candidates)
    rows, pos = np.nonzero(scored)
    for name in (
        "single_energy",
        "conditional_energy",
        "single_logit_diff",
        "conditional_logit_diff",
    ):
        want = np.stack([expected[tuple(u)][name][rows, pos] for u in candidates])
        np.testing.assert_allclose(got[name].values, want, atol=TOL, rtol=1e-4, err_msg=name)
        assert np.abs(want).max() > 1e-3, name  # the effects are not all zero
    assert (got.single_energy.values >= 0).all()
    # the set changes what a candidate's ablation does
    assert np.abs(got.conditional_energy - got.single_energy).max() > 1e-4


def test_fisher_energy_by_hand():
    clean = torch.log(torch.tensor([[0.5, 0.25, 0.25]]))
    ablated = torch.tensor([[0.0, 0.0, 0.0]])
    reference = torch.tensor([[1.0, 0.0, 2.0]])
    # d = (1, 0, 2), E_p d = 1, centred (0, -1, 1): 0.25 + 0.25
    assert fisher_energy(reference, ablated, clean).item() == pytest.approx(0.5)
    # a shift of every logit is no change of the distribution
    assert fisher_energy(reference + 3, reference, clean).item() == pytest.approx(0.0)


def test_answer_groups_take_one_answer_per_row_at_a_time():
    scored = torch.tensor([[True, False, True], [False, True, False], [True, True, True]])
    groups = answer_groups(scored)
    assert [g[0].tolist() for g in groups] == [[0, 1, 2], [0, 2], [2]]
    assert [g[1].tolist() for g in groups] == [[0, 1, 0], [2, 1], [2]]
    assert [g[2].tolist() for g in groups] == [[0, 2, 3], [1, 4], [5]]


@pytest.fixture(scope="module", params=["gpt2", "gpt_neox", "llama_gqa"])
def hf_pair(request, tmp_path_factory):
    """(Hugging Face model, the same checkpoint loaded by the project)."""
    hf_model, path = hf_checkpoint(request.param, tmp_path_factory)
    return hf_model, load_local_checkpoint(path)


@pytest.mark.parametrize(
    ("metric", "ablation"),
    [("logit_diff", "zero"), ("correct_logit", "zero"), ("logit_diff", "zero-with-value-bias")],
)
def test_gradient_methods_equal_autograd_on_hugging_face(hf_pair, metric, ablation):
    hf_model, model = hf_pair
    gen = torch.Generator().manual_seed(3)
    tokens = torch.randint(0, 64, (3, 10), generator=gen)
    counter = torch.randint(0, 64, (3, 9), generator=gen) if metric == "logit_diff" else None
    scored = np.zeros((3, 9), bool)
    scored[0, 8] = scored[1, [3, 6]] = scored[2, 5] = True
    members = [(0, 1), (1, 0)]
    got = measure_gradient_methods(
        model,
        tokens,
        ablation,
        members,
        scored,
        steps=STEPS,
        batch_size=2,
        task=TaskInputs(counter=counter),
    )
    ref = hf_gradient_methods(hf_model, tokens, counter, scored, members, STEPS, ablation)
    for name in ("conditional_gradient", "atp", "eap_ig"):
        assert np.abs(ref[name]).max() > 0.05, name
        np.testing.assert_allclose(got[name].values, ref[name], atol=TOL, rtol=0, err_msg=name)
    assert not got.conditional_gradient.values[0, 1].any()
    # the set's ablation changes the other heads' gradients
    assert np.abs(got.conditional_gradient - got.atp).values[1:].max() > 1e-3


def test_method_scores_by_hand():
    means = {
        "single_energy": np.array([0.5, 0.0, 2.0]),
        "conditional_energy": np.array([1.5, 0.3, 1.0]),
        "single_logit_diff": np.array([0.5, -0.2, 0.0]),
        "conditional_logit_diff": np.array([1.5, 0.4, 0.3]),
        "abs_conditional_gradient": np.array([0.1, 0.2, 0.3]),
        "abs_atp": np.array([0.3, 0.2, 0.1]),
        "eap_ig": np.array([-0.4, 0.1, 0.0]),
    }
    got = method_scores(means)
    assert got["compensation_energy"] == pytest.approx([1.0, 0.3, -1.0])
    # CoAx: conditional / single where single > 0, else 0
    assert got["amplification_ratio_energy"] == pytest.approx([3.0, 0.0, 0.5])
    assert got["compensation_logit_diff"] == pytest.approx([1.0, 0.6, 0.3])
    assert got["amplification_ratio_logit_diff"] == pytest.approx([3.0, 2.0, 0.3 / 0.005])
    assert got["eap_ig"] == pytest.approx([0.4, 0.1, 0.0])  # |mean|, after the mean
    assert got["atp"] == pytest.approx([0.3, 0.2, 0.1])
    assert energy_ratio(np.zeros(2), np.ones(2)) == pytest.approx([0.0, 0.0])


def test_method_table_ranks_intervals_and_extra_columns():
    """Three prompts of one answer each; the positive L2H0 best under single_energy on every
    prompt, so its ROC-AUC is 1 on every resample; an extra column joins without interval."""
    cands = ["L1H0", "L2H0", "L2H1"]
    rng = np.random.default_rng(0)
    per_token = {name: rng.random((3, 3)) for name in PER_TOKEN}
    per_token["single_energy"] = np.array([[0.1, 0.2, 0.1], [0.9, 0.8, 0.7], [0.3, 0.1, 0.2]])
    extra = {"atp_star_graddrop": {"L1H0": 0.2, "L2H0": 0.1, "L2H1": 0.3}}
    table = method_table(
        per_token, np.arange(3), cands, ["L2H0"], n_resamples=50, level=0.9, seed=0, extra=extra
    )
    row = table.loc["single_energy"]
    assert (row.roc_auc, row.roc_auc_low, row.roc_auc_high) == (1.0, 1.0, 1.0)
    assert row.average_precision == 1.0 and row.precision_at_k == 1.0 and row.k == 1
    assert row.coax_roc_auc == 0.603
    gd = table.loc["atp_star_graddrop"]
    assert gd.roc_auc == 0.0 and np.isnan(gd.roc_auc_low) and gd.coax_roc_auc == 0.665
    with pytest.raises(ValueError, match="extra method x lacks candidates L2H1"):
        with_extra_scores({"a": dict.fromkeys(cands, 0.0)}, {"x": {"L1H0": 1, "L2H0": 2}})


def test_graddrop_per_answer_joins_the_task_atp_store_with_its_interval():
    """AtP*'s GradDrop per answer from a task_atp store: each candidate's (layer, head) on the
    methods store's answers; refused on other answers, left out where a candidate is NaN; in
    the table with an interval (per answer, as the other methods)."""
    import xarray as xr

    from selfrepair.stages.methods import graddrop_per_answer

    answers = {"prompt": ("token", [0, 0, 1, 2]), "position": ("token", [3, 4, 3, 2])}
    values = np.arange(2 * 2 * 4, dtype=float).reshape(2, 2, 4)
    atp = xr.Dataset(
        {"graddrop_token_combined": (("layer", "head", "token"), values)}, coords=answers
    )
    cand = {"candidate_layer": ("candidate", [1, 0]), "candidate_head": ("candidate", [0, 1])}
    methods = xr.Dataset(coords={"candidate": ["L1H0", "L0H1"], **cand, **answers})
    got = graddrop_per_answer(atp, methods)
    np.testing.assert_array_equal(got, [values[1, 0], values[0, 1]])
    assert graddrop_per_answer(atp.drop_vars("graddrop_token_combined"), methods) is None
    nan = atp.copy(deep=True)
    nan.graddrop_token_combined[0, 1, 2] = np.nan
    assert graddrop_per_answer(nan, methods) is None
    moved = atp.assign_coords(position=("token", [3, 4, 4, 2]))
    with pytest.raises(ValueError, match=r"answers \(position\) are not the methods'"):
        graddrop_per_answer(moved, methods)
    per_token = {name: np.ones((2, 4)) for name in PER_TOKEN}
    per_token["atp_star_graddrop"] = got
    table = method_table(
        per_token, np.array([0, 0, 1, 2]), ["L1H0", "L0H1"], ["L1H0"],
        n_resamples=20, level=0.9, seed=0,
    )  # fmt: skip
    row = table.loc["atp_star_graddrop"]
    assert row.roc_auc == 1.0 and row.roc_auc_low == 1.0 and row.coax_roc_auc == 0.665
    assert (table.n_prompts == 3).all()  # the prompts measured, not the answers (4)


def test_method_page_states_its_prompts_and_shows_a_small_std():
    """The HTML page says what it was measured on (from the table, not the config) and writes
    a standard deviation to two significant figures: 0.00047 showed as 0.000 at three decimals."""
    assert std_text(0.00047) == "0.00047" and std_text(0.0087) == "0.0087"
    assert std_text(0.1) == "0.10" and std_text(0.0) == "0.0" and std_text(1e-7) == "1.0e-07"
    assert prompts_note(3) == "Measured on 3 prompts."
    assert prompts_note({1: 96, 15: 96}) == "Measured on 96 prompts per seed (seeds 1, 15)."
    assert prompts_note({1: 96, 15: 95}) == "Measured on 96 prompts (seed 1), 95 prompts (seed 15)."
    table = pd.DataFrame(
        {
            "roc_auc_mean": [0.5, 0.25],
            "roc_auc_std": [0.00047, np.nan],
            "n_prompts_seed1": [96, 96],
        },
        index=pd.Index(["atp", "eap_ig"], name="method"),
    )
    page = method_page(table, title="a <b>", note=prompts_note({1: 96}))
    assert "<title>a &lt;b&gt;</title>" in page
    assert "<p>Measured on 96 prompts per seed (seeds 1).</p>" in page
    cells = re.findall(r"<td>([^<]*)</td>", page)
    assert cells == ["0.500", "0.00047", "96", "0.250", "NaN", "96"], cells


def test_methods_figure_legend_hides_no_anchor_and_names_both_sizes():
    """The figure of the offline ioi-coax run (random gpt2-small, 2 prompts): its legend, at the
    lower right inside the axes, covered the diamond of the lowest bar (conditional energy,
    CoAx 0.758); and nothing said the diamonds are CoAx's trained model at 96 prompts x 4 seeds
    while the bars are this run's prompts. Now no diamond lies under the legend, and its labels
    say both."""
    from selfrepair.analysis.methods import COAX_ROC_AUC
    from selfrepair.plots.methods import methods_figure

    # ROC-AUCs of that run's seed 1 (tables/methods-name_movers.csv), its lowest first
    roc = {"conditional_energy": 0.19, "single_energy": 0.2, "amplification_ratio_energy": 0.33}
    roc |= {"compensation_energy": 0.4, "conditional_gradient": 0.47, "atp": 0.47, "eap_ig": 0.54}
    roc |= {"atp_star_graddrop": 0.48, "compensation_logit_diff": 0.51}
    roc |= {"amplification_ratio_logit_diff": 0.52, "single_logit_diff": 0.525}
    table = pd.DataFrame({"roc_auc": roc}).assign(roc_auc_low=lambda t: t.roc_auc - 0.02)
    table = table.assign(roc_auc_high=lambda t: t.roc_auc + 0.1)
    table["coax_roc_auc"] = [COAX_ROC_AUC.get(m, np.nan) for m in table.index]
    fig = methods_figure(table, anchors=True, n_prompts=2)
    fig.canvas.draw()
    ax = fig.axes[0]
    legend = ax.get_legend()
    box = legend.get_window_extent()
    diamonds = np.asarray(ax.collections[-1].get_offsets(), float)
    diamonds = diamonds[np.isfinite(diamonds).all(1)]
    assert len(diamonds) == table.coax_roc_auc.notna().sum()
    shown = ax.transData.transform(diamonds)
    assert not any(box.contains(x, y) for x, y in shown), "a diamond under the legend"
    labels = [t.get_text() for t in legend.get_texts()]
    assert any("2 prompts" in t for t in labels), labels
    assert any("96 prompts x 4 seeds" in t for t in labels), labels


def test_methods_figure_labels_each_method_with_its_roc_auc():
    """The demo's table on induction-pythia has AtP at ROC-AUC 0: a bar of zero length showed
    nothing; each tick label now carries the value (n/a where undefined)."""
    from selfrepair.plots.methods import methods_figure

    table = pd.DataFrame(
        {"roc_auc": [0.0, 1.0, np.nan], "roc_auc_low": [0.0, 1.0, np.nan]},
        index=["atp", "conditional_energy", "eap_ig"],
    ).assign(roc_auc_high=lambda t: t.roc_auc_low, coax_roc_auc=np.nan)
    fig = methods_figure(table)
    labels = [t.get_text() for t in fig.axes[0].get_yticklabels()]
    assert sorted(labels) == ["atp  0.00", "conditional energy  1.00", "eap ig  n/a"]
