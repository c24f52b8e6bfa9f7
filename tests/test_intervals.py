"""Bootstrap intervals against hand computations: every resample rebuilt as an explicit sample
(np.repeat of the drawn tokens), its mean taken with numpy, quantiles with np.quantile."""

from __future__ import annotations

import numpy as np
import pytest
import xarray as xr

import selfrepair.analysis.intervals as intervals
from selfrepair.analysis.intervals import (
    bootstrap_means,
    head_intervals,
    percentile_interval,
    resample_blocks,
)
from selfrepair.variables import HEAD_VARIABLES


def synthetic(n_layers=2, n_heads=3, n_batch=5, n_pos=8, seed=0) -> xr.Dataset:
    rng = np.random.default_rng(seed)
    shape = (n_layers, n_heads, n_batch, n_pos)
    dims = ("layer", "head", "batch", "pos")
    data = {name: (dims, rng.normal(size=shape).astype(np.float32)) for name in HEAD_VARIABLES}
    return xr.Dataset(data)


def counts_of(n, n_resamples, seed):
    return np.concatenate(list(resample_blocks(n, n_resamples, seed)))


def hand_means(values: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """Mean of the explicit resample (each token repeated as often as drawn), NaNs skipped."""
    out = []
    for row in counts.astype(int):
        sample = np.repeat(values, row)
        sample = sample[np.isfinite(sample)]
        out.append(sample.mean() if sample.size else np.nan)
    return np.array(out)


def hand_interval(values, n_resamples, seed, level):
    means = hand_means(values, counts_of(len(values), n_resamples, seed))
    a = (1 - level) / 2
    return np.nanquantile(means, [a, 1 - a])  # resamples that keep no token have no mean


def test_resamples_draw_n_tokens_each_in_blocks_and_are_seeded(monkeypatch):
    monkeypatch.setattr(intervals, "MAX_BLOCK_ELEMENTS", 7 * 10)  # blocks of 7 resamples
    blocks = list(resample_blocks(10, 20, seed=3))
    assert [b.shape for b in blocks] == [(7, 10), (7, 10), (6, 10)]
    counts = np.concatenate(blocks)
    assert (counts.sum(axis=1) == 10).all() and (counts >= 0).all()
    assert np.array_equal(counts, counts_of(10, 20, 3))
    assert not np.array_equal(counts, counts_of(10, 20, 4))
    # Every block is a fresh draw: not the same resample repeated.
    assert len({tuple(row) for row in counts}) > 15


def test_bootstrap_means_equal_means_of_explicit_resamples():
    rng = np.random.default_rng(0)
    values = rng.normal(size=(3, 9))
    values[1, [2, 5]] = np.nan  # skipped tokens
    values[2, :] = np.nan  # nothing kept
    got = bootstrap_means(values, 50, seed=1)
    counts = counts_of(9, 50, 1)
    for unit in range(2):
        np.testing.assert_allclose(got[unit], hand_means(values[unit], counts), rtol=1e-12)
    assert np.isnan(got[2]).all()


def test_percentile_interval_is_the_quantile_pair():
    means = np.random.default_rng(0).normal(size=(4, 200))
    got = percentile_interval(means, 0.9)
    np.testing.assert_allclose(got, np.quantile(means, [0.05, 0.95], axis=-1).T)


def test_interval_width_matches_the_standard_error_on_iid_data():
    values = np.random.default_rng(5).normal(2.0, 3.0, size=(1, 4000))
    lo, hi = percentile_interval(bootstrap_means(values, 2000, seed=0), 0.95)[0]
    half = 1.96 * values.std() / np.sqrt(values.size)
    assert lo < values.mean() < hi
    assert (hi - lo) / 2 == pytest.approx(half, rel=0.08)


def test_head_intervals_match_hand_computation_per_head():
    ds = synthetic()
    ds["de_clean"] = ds.de_clean + 0.5
    ds["self_repair"][1, 2] = np.nan  # an unmeasured head
    ds["sr_ln"][1, 2] = np.nan
    ds["de_clean"][1, 2] = np.nan
    fraction, eps, n_res, level, seed = 0.25, 1.4, 40, 0.8, 7  # 10 top tokens of 40
    out = head_intervals(
        ds, top_fraction=fraction, de_epsilon=eps, n_resamples=n_res, level=level, seed=seed
    )
    assert out.top_self_repair.dims == ("layer", "head", "bound")
    assert list(out.bound.values) == ["low", "high"]
    dropped = 0
    for layer in range(2):
        for head in range(3):
            if (layer, head) == (1, 2):
                assert np.isnan(out.sel(layer=layer, head=head).to_array()).all()
                continue
            de = ds.de_clean.values[layer, head].ravel()
            sr = ds.self_repair.values[layer, head].ravel()
            ln = ds.sr_ln.values[layer, head].ravel()
            top = np.sort(np.argsort(-de, kind="stable")[:10])  # token order
            share = np.where(de[top] > eps, ln[top] / de[top], np.nan)
            dropped += np.isnan(share).sum()
            expect = {
                "top_self_repair": hand_interval(sr[top], n_res, seed, level),
                "top_ln_share": hand_interval(share, n_res, seed, level),
                "top_ln_share_clipped": hand_interval(np.clip(share, 0, 1), n_res, seed, level),
                "mean_self_repair": hand_interval(sr, n_res, seed, level),
            }
            for name, want in expect.items():
                got = out[name].values[layer, head]
                np.testing.assert_allclose(
                    got, want, rtol=1e-5, atol=1e-6, err_msg=f"{name} L{layer}H{head}"
                )
    assert 0 < dropped < 50  # top tokens of some heads were dropped from the share, not all
    assert out.attrs["level"] == level and out.attrs["n_resamples"] == n_res


def test_a_layer_with_no_measured_head_gives_nan_and_others_are_unchanged():
    ds = synthetic(n_layers=3)
    full = head_intervals(ds, top_fraction=0.2, n_resamples=30, seed=2)
    for name in ("self_repair", "sr_ln", "de_clean"):
        ds[name][1] = np.nan
    part = head_intervals(ds, top_fraction=0.2, n_resamples=30, seed=2)
    assert np.isnan(part.isel(layer=1).to_array()).all()
    for layer in (0, 2):
        xr.testing.assert_allclose(part.isel(layer=layer), full.isel(layer=layer))


def test_float32_means_agree_with_float64_on_many_tokens():
    values = np.random.default_rng(3).normal(0.1, 1.0, size=(2, 20000)).astype(np.float32)
    single = bootstrap_means(values, 40, seed=0)
    double = bootstrap_means(values.astype(np.float64), 40, seed=0)
    assert single.dtype == np.float32
    np.testing.assert_allclose(single, double, atol=1e-6)
