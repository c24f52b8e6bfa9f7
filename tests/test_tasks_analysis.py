"""The task reductions on synthetic data: stores narrowed to the answer positions, the summaries
and intervals over them (the paper's reductions, unchanged, on a `token` axis), the clean metric,
and the backup table's rankings and ROC-AUC against hand computations."""

from __future__ import annotations

import numpy as np
import pytest
import xarray as xr

from selfrepair.analysis.intervals import head_intervals
from selfrepair.analysis.ranking import roc_auc
from selfrepair.analysis.reduce import head_summary
from selfrepair.analysis.tasks import (
    NO_BACKUP_LAST_LAYER,
    clean_metric,
    head_backups,
    joint_de_rise,
    no_backup_notes,
    scored_tokens,
    set_backups,
    set_tie_notes,
    structurally_zero,
    summed_single_dde,
)
from selfrepair.engine.attribution import component_coords
from selfrepair.variables import HEAD_VARIABLES, component_names, n_components


def per_token(seed: int = 0, n_layers: int = 2, n_heads: int = 3) -> tuple[xr.Dataset, np.ndarray]:
    rng = np.random.default_rng(seed)
    shape = (n_layers, n_heads, 5, 7)
    data = {v: (("layer", "head", "batch", "pos"), rng.normal(size=shape)) for v in HEAD_VARIABLES}
    ds = xr.Dataset(data, coords={"batch": np.arange(5), "pos": np.arange(7)})
    scored = np.zeros((5, 7), bool)
    scored[[0, 1, 1, 3, 4], [6, 2, 5, 0, 3]] = True
    return ds, scored


def test_scored_tokens_keep_the_answer_positions_in_prompt_order():
    ds, scored = per_token()
    out = scored_tokens(ds, scored)
    assert out.prompt.values.tolist() == [0, 1, 1, 3, 4]
    assert out.position.values.tolist() == [6, 2, 5, 0, 3]
    np.testing.assert_array_equal(out.de_clean.values[1, 2], ds.de_clean.values[1, 2][scored])
    assert "resample_source" not in out.coords


def test_scored_tokens_keep_each_answers_resample_partner():
    """A resample ablation's partner prompt of each answer token: what the task explorer shows
    beside it (analysis.explorer.answer_rows, partner_rows)."""
    ds, scored = per_token()
    ds = ds.assign_coords(resample_source=("batch", [3, 0, 4, 1, 2]))
    out = scored_tokens(ds, scored)
    assert out.resample_source.dims == ("token",)
    assert out.resample_source.values.tolist() == [3, 0, 0, 1, 2]


def test_summaries_over_the_answers_are_their_plain_means():
    ds, scored = per_token()
    tokens = scored_tokens(ds, scored)
    summary = head_summary(tokens, top_fraction=1.0, de_epsilon=-10.0)
    for name in HEAD_VARIABLES:
        brute = ds[name].values[..., scored].mean(-1)
        np.testing.assert_allclose(summary[f"mean_{name}"].values, brute, atol=1e-12)
        np.testing.assert_allclose(summary[f"top_{name}"].values, brute, atol=1e-12)
    assert summary.attrs["n_tokens"] == 5 and (summary.top_n_tokens.values == 5).all()
    intervals = head_intervals(tokens, top_fraction=1.0, n_resamples=50, seed=0)
    assert intervals.attrs["n_tokens"] == 5
    low, high = (
        intervals.top_self_repair.sel(bound="low"),
        intervals.top_self_repair.sel(bound="high"),
    )
    assert (low.values <= summary.top_self_repair.values + 1e-12).all()
    assert (high.values >= summary.top_self_repair.values - 1e-12).all()


def test_clean_metric_over_the_answers():
    logit = np.array([[1.0, -2.0, 3.0], [0.5, 4.0, -1.0]])
    top1 = np.array([[True, False, True], [False, True, False]])
    loss = np.array([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]])
    scored = np.array([[False, True, True], [False, True, False]])
    baseline = np.array([[True, False, False], [True, False, False]])
    out = clean_metric(logit, top1, loss, scored, baseline, "logit_diff")
    assert out["mean"] == pytest.approx((-2 + 3 + 4) / 3)
    assert out["top1"] == pytest.approx(2 / 3) and out["above_counterfactual"] == pytest.approx(
        2 / 3
    )
    assert out["loss_answers"] == pytest.approx(10 / 3) and out["loss_baseline"] == 2.5
    assert out["top1_baseline"] == 0.5  # the first copy's top-1, beside the answers' (induction)
    assert out["n_answers"] == 3 and out["n_prompts"] == 2


class FakeModel:
    class cfg:  # noqa: N801 (the shape of a HookedTransformer's cfg)
        n_layers, n_heads = 3, 2


def _repairs(top_dde: np.ndarray) -> xr.Dataset:
    coords = component_coords(FakeModel) | {"layer": np.arange(3), "head": np.arange(2)}
    return xr.Dataset({"top_dde": (("layer", "head", "component"), top_dde)}, coords=coords)


def test_backup_rankings_and_auc_by_hand():
    names = component_names(3, 2)
    n_c = n_components(3, 2)
    # the set {L0H0, L0H1} ablated jointly: heads rise by these means over two answers
    rise = {"L1H0": 0.5, "L1H1": 0.1, "L2H0": 0.3, "L2H1": -0.2}
    dde = np.zeros((1, 2, n_c))
    for head, value in rise.items():
        dde[0, :, names.index(head)] = [value - 0.1, value + 0.1]
    sets = xr.Dataset(
        {
            "dde": (("set", "token", "component"), dde),
            **{v: (("set", "token"), np.ones((1, 2))) for v in HEAD_VARIABLES},
        },
        coords={"set": ["movers"], **component_coords(FakeModel)},
        attrs={"sets": {"movers": [[0, 0], [0, 1]]}},
    )
    assert joint_de_rise(sets, "movers") == pytest.approx(rise)
    # single ablation: L0H0 then L0H1 alone; NaN (not downstream) counts 0
    top = np.full((3, 2, n_c), np.nan)
    top[0, 0, names.index("L2H1")] = 0.9
    top[0, 1, names.index("L2H1")] = 0.2
    top[0, 1, names.index("L1H0")] = 0.4
    single = summed_single_dde(_repairs(top), [[0, 0], [0, 1]])
    assert single == pytest.approx({"L1H0": 0.4, "L1H1": 0.0, "L2H0": 0.0, "L2H1": 1.1})
    table = set_backups(sets, _repairs(top), [[1, 0], [2, 0]], 3, {"mover": [[0, 0]]})
    assert table.backup.tolist() == ["L1H0", "L2H0", "L1H1"]
    assert table.expected_backup.tolist() == [True, True, False]
    # joint: both expected (0.5, 0.3) beat both others (0.1, -0.2): 1. single: L1H0 (0.4)
    # beats L1H1 (0) and loses to L2H1 (1.1); L2H0 (0) ties L1H1 (a half), loses to L2H1
    assert table.roc_auc_joint_de_rise.iloc[0] == 1.0 == roc_auc(rise, ["L1H0", "L2H0"])
    assert table.roc_auc_summed_single_dde.iloc[0] == pytest.approx((1 + 0 + 0.5 + 0) / 4)
    assert table.summed_single_dde.tolist() == pytest.approx([0.4, 0.0, 0.0])
    # no head is below the set's layer 0 but its own layer's: nothing is tied, no cap
    assert table.tied_at_zero.iloc[0] == 0 and table.roc_auc_cap.iloc[0] == 1.0


def _sets(by_head: dict[str, float], members: list[list[int]]) -> xr.Dataset:
    """A sets store of one set over 3 layers x 2 heads: each head's dDE on two answers."""
    names = component_names(3, 2)
    dde = np.zeros((1, 2, n_components(3, 2)))
    for head, value in by_head.items():
        dde[0, :, names.index(head)] = [value - 0.1, value + 0.1]
    return xr.Dataset(
        {
            "dde": (("set", "token", "component"), dde),
            **{v: (("set", "token"), np.ones((1, 2))) for v in HEAD_VARIABLES},
        },
        coords={"set": ["s"], **component_coords(FakeModel)},
        attrs={"sets": {"s": members}},
    )


def test_heads_at_or_below_the_sets_first_layer_tie_at_zero_and_cap_the_auc():
    # the set {L1H0}: L0H0, L0H1 and L1H1 read nothing it writes (their dDE is exactly 0)
    sets = _sets({"L2H0": 0.4, "L2H1": 0.1}, [[1, 0]])
    assert structurally_zero(sets, "s") == ["L0H0", "L0H1", "L1H1"]
    top = np.full((3, 2, n_components(3, 2)), np.nan)
    table = set_backups(sets, _repairs(top), [[1, 1], [2, 0]], 2, {})
    row = table.iloc[0]
    # expected L1H1 (tied) and L2H0; others L0H0, L0H1 (tied), L2H1. Best case: L2H0 first,
    # the tie's 2 pairs a half each: 1 - 1 / 6. The joint ranking: L2H0 beats 3, L1H1 ties
    # two and loses to L2H1: 4 of 6. AP: L2H0 alone (precision 1), then L2H1, then the tie
    # (2 of 5): 0.5 + 0.5 * 0.4. Precision@2: L2H0 and L2H1.
    assert row.tied_at_zero == 3 and row.roc_auc_cap == pytest.approx(5 / 6)
    assert row.roc_auc_joint_de_rise == pytest.approx(4 / 6)
    assert row.average_precision_joint_de_rise == pytest.approx(0.7)
    assert row.precision_at_k_joint_de_rise == pytest.approx(0.5)
    # the summed single ablations are all 0 here (nothing measured): every pair ties
    assert row.roc_auc_summed_single_dde == 0.5
    assert set_tie_notes(table) == [
        "Set s: 3 heads at or below its first layer score exactly 0 under both rankings (they "
        "read nothing the set writes), so neither ranking can reach a ROC-AUC above 0.833."
    ]


def test_the_joint_rankings_roc_auc_interval_resamples_the_prompts():
    # two prompts: on prompt 0 L2H0 (expected) rises above L2H1, on prompt 1 below it
    sets = _sets({}, [[1, 0]]).assign_coords(prompt=("token", [0, 1]))
    names = list(sets.component.values)
    sets.dde[0, :, names.index("L2H0")] = [1.0, -1.0]
    sets.dde[0, :, names.index("L2H1")] = [0.0, 0.5]
    top = np.full((3, 2, n_components(3, 2)), np.nan)
    boot = {"n_resamples": 400, "level": 0.9, "seed": 0}
    row = set_backups(sets, _repairs(top), [[2, 0]], 2, {}, boot).iloc[0]
    # L2H0 against 4 others, 3 tied at 0: prompt 0 drawn twice gives 4 of 4, prompt 1 twice
    # 0 of 4, one of each (mean 0 against 0.25 and three 0s): 1.5 of 4
    assert row.roc_auc_joint_de_rise == pytest.approx(1.5 / 4)
    assert (row.roc_auc_joint_de_rise_low, row.roc_auc_joint_de_rise_high) == (0.0, 1.0)
    assert "roc_auc_joint_de_rise_low" not in set_backups(sets, _repairs(top), [[2, 0]], 2, {})
    nothing = set_backups(sets, _repairs(top), [], 2, {}, boot).iloc[0]  # no expected backups
    assert np.isnan([nothing.roc_auc_joint_de_rise_low, nothing.roc_auc_cap]).all()


def _summary(mean: np.ndarray) -> xr.Dataset:
    """A per-head summary whose clean DE is `mean` (layer x head), its other means fixed parts."""
    layers, heads = mean.shape
    return xr.Dataset(
        {
            "mean_de_clean": (("layer", "head"), mean),
            "mean_de_ablated": (("layer", "head"), mean / 2),
            "mean_logit_diff": (("layer", "head"), -mean / 4),
            "mean_self_repair": (("layer", "head"), mean / 4),
        },
        coords={"layer": np.arange(layers), "head": np.arange(heads)},
    )


def test_head_backups_list_the_largest_heads_top_compensators():
    n_c = n_components(3, 2)
    names = component_names(3, 2)
    mean = np.array([[0.1, 2.0], [1.0, np.nan], [0.3, 0.2]])
    summary = _summary(mean)
    top = np.full((3, 2, n_c), np.nan)
    top[0, 1, names.index("L2H0")] = 0.5
    top[0, 1, names.index("L1H1")] = 0.7
    top[0, 1, names.index("MLP2")] = 9.0  # an MLP is no backup head
    top[1, 0, names.index("L2H1")] = 0.25
    table = head_backups(summary, _repairs(top), 2, 2, {"big": [[0, 1]]})
    assert table.ablated.tolist() == ["L0H1", "L0H1", "L1H0"]
    assert table.backup.tolist() == ["L1H1", "L2H0", "L2H1"]
    assert table.share_of_de_drop.tolist() == pytest.approx([0.7, 0.5, 0.5])
    assert table.ablated_role.tolist() == ["big", "big", ""]


def test_head_backups_list_a_last_layer_head_with_the_reason_it_has_none():
    """A last-layer head among the largest by DE has no downstream head: it keeps its row, with
    empty backup columns and the reason, and the table lists all n_heads heads (issue 34, 7)."""
    n_c = n_components(3, 2)
    names = component_names(3, 2)
    # by DE: L0H1 (2.0), L2H0 (1.5, last layer), L1H0 (1.0), then L2H1 (0.8), L0H0
    mean = np.array([[0.1, 2.0], [1.0, 0.05], [1.5, 0.8]])
    summary = _summary(mean)
    top = np.full((3, 2, n_c), np.nan)
    top[0, 1, names.index("L2H0")] = 0.5
    top[0, 1, names.index("L1H1")] = 0.7
    top[1, 0, names.index("L2H1")] = 0.25
    top[2, 0, names.index("LN")] = 0.3  # the final LayerNorm repairs it, but is no backup head
    table = head_backups(summary, _repairs(top), 3, 2, {"big": [[2, 0]]})
    assert table.ablated.unique().tolist() == ["L0H1", "L2H0", "L1H0"]
    assert table.ablated.tolist() == ["L0H1", "L0H1", "L2H0", "L1H0"]
    last = table[table.ablated == "L2H0"].iloc[0]
    assert last.backup == "" and np.isnan(last.backup_dde) and np.isnan(last.share_of_de_drop)
    assert last.de_clean == 1.5 and last.de_drop == 0.75 and last.ablated_role == "big"
    assert last.note == NO_BACKUP_LAST_LAYER
    assert (table[table.ablated != "L2H0"].note == "").all()
    assert no_backup_notes(table) == [f"L2H0 has no backup heads: {NO_BACKUP_LAST_LAYER}."]


def test_task_head_table_has_head_summarys_columns_and_names_its_metric():
    import pandas as pd

    from selfrepair.analysis.tables import TABLE_COLUMNS, head_table, table_html, task_head_table

    shape = {"layer": 2, "head": 3}
    rng = np.random.default_rng(0)
    summary = xr.Dataset(
        {n: (("layer", "head"), rng.normal(size=(2, 3))) for n in TABLE_COLUMNS},
        coords={"layer": [0, 1], "head": [0, 1, 2]},
        attrs={"n_tokens": 12},
    )
    summary["top_n_tokens"] = xr.full_like(summary.top_n_tokens, 12).astype(np.int64)
    summaries = {("m", "mean"): summary, ("m", "zero"): summary * 2}
    summaries[("m", "zero")].attrs = summary.attrs
    plain = head_table(summaries)
    table = task_head_table("mine", "logit_diff", summaries)
    assert list(table.columns) == ["model", "ablation", "task", "metric", "metric_is"] + list(
        plain.columns[2:]
    )
    assert len(table) == 2 * shape["layer"] * shape["head"]
    assert (table.metric_is == "logit difference (answer - counterfactual)").all()
    pd.testing.assert_frame_equal(table.drop(columns=["task", "metric", "metric_is"]), plain)
    assert "correct-token logit" in task_head_table("t", "correct_logit", summaries).metric_is[0]
    assert "values in the logit difference" in table_html(table, title="T")
    with pytest.raises(ValueError, match="unknown task metric"):
        task_head_table("t", "loss", summaries)
