"""Per-head summaries against hand computations on a small synthetic Dataset."""

from __future__ import annotations

import numpy as np
import pytest
import xarray as xr

from selfrepair.analysis.reduce import head_summary, top_token_mask
from selfrepair.variables import HEAD_VARIABLES


def synthetic(n_layers=2, n_heads=3, n_batch=4, n_pos=5, seed=0) -> xr.Dataset:
    rng = np.random.default_rng(seed)
    shape = (n_layers, n_heads, n_batch, n_pos)
    dims = ("layer", "head", "batch", "pos")
    data = {name: (dims, rng.normal(size=shape).astype(np.float32)) for name in HEAD_VARIABLES}
    return xr.Dataset(data, attrs={"ablation": "zero"})


def test_top_mask_selects_exactly_ceil_fraction_of_highest():
    ds = synthetic()
    mask = top_token_mask(ds.de_clean, 0.1)  # ceil(0.1 * 20) = 2 tokens per head
    assert (mask.sum("token") == 2).all()
    flat = ds.de_clean.values.reshape(2, 3, 20)
    for layer in range(2):
        for head in range(3):
            chosen = np.sort(flat[layer, head][mask.values[layer, head]])
            assert np.array_equal(chosen, np.sort(flat[layer, head])[-2:])


def test_summary_means_match_hand_computation():
    ds = synthetic()
    out = head_summary(ds, top_fraction=0.25, de_epsilon=0.1)  # 5 top tokens of 20
    for layer in range(2):
        for head in range(3):
            sel = {name: ds[name].values[layer, head].ravel() for name in HEAD_VARIABLES}
            top = np.argsort(-sel["de_clean"], kind="stable")[:5]
            for name in HEAD_VARIABLES:
                assert np.isclose(
                    out[f"mean_{name}"].values[layer, head], sel[name].mean(), atol=1e-6
                )
                assert np.isclose(
                    out[f"top_{name}"].values[layer, head], sel[name][top].mean(), atol=1e-6
                )
            de, ln = sel["de_clean"][top], sel["sr_ln"][top]
            keep = de > 0.1
            assert out.top_n_dropped.values[layer, head] == (~keep).sum()
            share = ln[keep] / de[keep]
            expect_unclipped = share.mean() if keep.any() else np.nan
            expect_clipped = np.clip(share, 0, 1).mean() if keep.any() else np.nan
            np.testing.assert_allclose(
                out.top_ln_share.values[layer, head], expect_unclipped, atol=1e-6
            )
            np.testing.assert_allclose(
                out.top_ln_share_clipped.values[layer, head], expect_clipped, atol=1e-6
            )


def test_clipping_is_applied_per_token_before_averaging():
    ds = synthetic(n_layers=1, n_heads=1, n_batch=1, n_pos=2)
    ds["de_clean"][:] = np.array([1.0, 2.0]).reshape(1, 1, 1, 2)
    ds["sr_ln"][:] = np.array([3.0, -1.0]).reshape(1, 1, 1, 2)  # shares 3.0 and -0.5
    out = head_summary(ds, top_fraction=1.0, de_epsilon=0.0)
    assert out.top_ln_share.item() == pytest.approx(1.25)
    assert out.top_ln_share_clipped.item() == pytest.approx(0.5)  # (1 + 0) / 2


def test_unmeasured_heads_stay_nan_and_are_not_selected():
    ds = synthetic()
    for name in HEAD_VARIABLES:
        ds[name][0, 1] = np.nan
    out = head_summary(ds, top_fraction=0.1)
    assert np.isnan(out.mean_self_repair.values[0, 1]) and out.top_n_tokens.values[0, 1] == 0
    assert np.isfinite(out.mean_self_repair.values[0, 0])
