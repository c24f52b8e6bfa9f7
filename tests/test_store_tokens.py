"""engine.store_tokens: the per-shard parts (analysis.shards) that a `top` shard keeps against
the per-token reductions they replace (analysis.reduce, analysis.intervals, the explorer's
ranking, AtP's exact side), on synthetic shards; the workflow's own runs of both layouts are
compared file by file in tests/test_report.py."""

from __future__ import annotations

import numpy as np
import pytest
import xarray as xr

from selfrepair.analysis import explorer, from_shards, shards
from selfrepair.analysis.attribution import top_token_indices
from selfrepair.analysis.clean_layout import merge_top_candidates, top_candidates
from selfrepair.analysis.from_shards import masked_mean, summary_and_intervals_from_parts
from selfrepair.analysis.intervals import resample_blocks, summary_and_intervals
from selfrepair.variables import HEAD_VARIABLES

N_LAYERS, N_HEADS, ROWS, N_POS = 2, 3, 6, 7
FRACTION, EPS, RESAMPLES, SEED = 0.1, 0.01, 50, 3


def make_shards(n_shards: int = 3, unmeasured=((1, 2),), seed: int = 0) -> list[xr.Dataset]:
    """Per-token shards as the ablate jobs write them (global rows on batch), a head not
    measured (NaN) and a few exact ties in de_clean."""
    rng = np.random.default_rng(seed)
    out = []
    for s in range(n_shards):
        shape = (N_LAYERS, N_HEADS, ROWS, N_POS)
        data = {n: rng.normal(size=shape).astype(np.float32) for n in HEAD_VARIABLES}
        data["de_clean"][0, 0, :2, :3] = 0.75  # ties across rows and shards
        for layer, head in unmeasured:
            for n in HEAD_VARIABLES:
                data[n][layer, head] = np.nan
        ds = xr.Dataset(
            {n: (("layer", "head", "batch", "pos"), v) for n, v in data.items()}
            | {"logit_clean": (("batch", "pos"), rng.normal(size=(ROWS, N_POS)).astype("f4"))},
            coords={
                "batch": np.arange(s * ROWS, (s + 1) * ROWS),
                "resample_source": ("batch", rng.integers(0, 100, ROWS)),
            },
            attrs={"model": "toy"},
        )
        out.append(ds)
    return out


def clean_top(parts: list[xr.Dataset]) -> np.ndarray:
    de = xr.concat([p.de_clean for p in parts], "batch")
    return top_token_indices(de.fillna(0.0), FRACTION).values


def test_top_values_hold_each_top_token_once_in_order():
    stores = make_shards()
    token = clean_top(stores)
    tops = [shards.top_values(ds, token, int(ds.batch[0])) for ds in stores]
    held = np.concatenate([t.top_token.values for t in tops], -1)
    for layer in range(N_LAYERS):
        for head in range(N_HEADS):
            got = held[layer, head][held[layer, head] >= 0]
            np.testing.assert_array_equal(got, token[layer, head])
    flat = xr.concat(stores, "batch").de_clean.values.reshape(N_LAYERS, N_HEADS, -1)
    first = tops[0]
    for layer, head, slot in np.ndindex(first.top_token.shape):
        t = int(first.top_token[layer, head, slot])
        if t >= 0:
            np.testing.assert_equal(
                first.top_de_clean.values[layer, head, slot], flat[layer, head, t]
            )


def parts_of(stores, token, n_tokens):
    draws = dict(n_tokens=n_tokens, n_resamples=RESAMPLES, seed=SEED)
    return [from_shards.read_summary_parts(ds, token, **draws) for ds in stores]


def from_parts(parts, n_tokens):
    return summary_and_intervals_from_parts(
        parts,
        n_tokens=n_tokens,
        top_fraction=FRACTION,
        de_epsilon=EPS,
        n_resamples=RESAMPLES,
        level=0.9,
        seed=SEED,
        attrs={"model": "toy"},
    )


def test_summary_from_parts_is_the_per_token_summary():
    """Against analysis.reduce/intervals on every token at once: the same top tokens, the
    same numbers to float32 rounding (means here are float64 sums), the top-token intervals
    bitwise (the same rows bootstrapped) and the all-token interval to rounding."""
    stores = make_shards()
    n_tokens = 3 * ROWS * N_POS
    token = clean_top(stores)
    summary, intervals = from_parts(parts_of(stores, token, n_tokens), n_tokens)
    old_summary, old_intervals = summary_and_intervals(
        xr.concat(stores, "batch"),
        top_fraction=FRACTION,
        de_epsilon=EPS,
        n_resamples=RESAMPLES,
        level=0.9,
        seed=SEED,
    )
    assert set(summary.data_vars) == set(old_summary.data_vars)
    for name in summary.data_vars:
        a, b = summary[name].values, old_summary[name].values
        assert a.dtype == b.dtype, name
        np.testing.assert_allclose(a, b, rtol=2e-6, atol=1e-6, err_msg=name)
    assert np.isnan(summary.mean_self_repair.values[1, 2])
    assert summary.top_n_tokens.values[1, 2] == 0
    for name in intervals.data_vars:
        tol = 1e-5 if name == "mean_self_repair" else 0
        np.testing.assert_allclose(
            intervals[name].values, old_intervals[name].values, atol=tol, err_msg=name
        )
    assert summary.attrs["n_tokens"] == old_summary.attrs["n_tokens"]


def top_stores(stores, token, n_tokens, heads=((0, 1),)):
    return [
        shards.top_layout(
            ds,
            token,
            n_tokens=n_tokens,
            n_resamples=RESAMPLES,
            seed=SEED,
            heads=heads,
            k=4,
            context=3,
        )
        for ds in stores
    ]


def test_both_layouts_give_the_same_bits():
    stores = make_shards()
    n_tokens = 3 * ROWS * N_POS
    token = clean_top(stores)
    tops = top_stores(stores, token, n_tokens)
    assert all(shards.layout_of(t) == "top" for t in tops)
    a = from_parts(parts_of(stores, token, n_tokens), n_tokens)
    b = from_parts(parts_of(tops, token, n_tokens), n_tokens)
    for x, y in zip(a, b, strict=True):
        xr.testing.assert_identical(x, y)
    # a head kept per token: its values as stored, from either layout
    for ds, top in zip(stores, tops, strict=True):
        names = ["de_clean", "logit_diff"]
        xr.testing.assert_equal(
            shards.head_values(ds, 0, 1, names), shards.head_values(top, 0, 1, names)
        )
        assert shards.head_values(top, 0, 0, names) is None


def test_a_shard_holding_no_top_token_keeps_one_empty_slot():
    (ds,) = make_shards(1)
    elsewhere = np.full((N_LAYERS, N_HEADS, 2), 10_000)  # every top token in a later shard
    top = shards.top_values(ds, elsewhere, 0)
    assert top.sizes["slot"] == 1 and (top.top_token.values == -1).all()
    assert np.isnan(top.top_de_clean.values).all()


def test_a_shard_keeping_no_head_per_token_is_written_and_read():
    """No per-token figure in this model: no kept_* variables, and every reader still works."""
    stores = make_shards(2)
    n_tokens = 2 * ROWS * N_POS
    token = clean_top(stores)
    tops = top_stores(stores, token, n_tokens, heads=())
    assert not any(name.startswith("kept_") for name in tops[0].data_vars)
    assert shards.head_values(tops[0], 0, 1, ["de_clean"]) is None
    assert shards.not_kept(tops, [(0, 1)]) == [(0, 1)]
    assert np.isnan(shards.as_per_token(tops[0], ["de_clean"]).de_clean.values).all()
    a = from_parts(parts_of(stores, token, n_tokens), n_tokens)
    b = from_parts(parts_of(tops, token, n_tokens), n_tokens)
    for x, y in zip(a, b, strict=True):
        xr.testing.assert_identical(x, y)


def test_bootstrap_parts_refuse_other_draws():
    stores = make_shards(1)
    token = clean_top(stores)
    (top,) = top_stores(stores, token, ROWS * N_POS)
    with pytest.raises(ValueError, match="figures.bootstrap"):
        from_shards.read_summary_parts(top, token, n_tokens=ROWS * N_POS, n_resamples=7, seed=SEED)


def test_merged_candidates_are_the_ranking_of_every_token():
    """The explorer's top k by each ranking over all shards (explorer.top_positions on every
    token, ties by position) from each shard's k candidates."""
    stores = make_shards()
    k, context = 4, 3
    merged = shards.merge_candidates([shards.candidate_tokens(d, k, context) for d in stores], k)
    every = xr.concat(stores, "batch")
    for layer in range(N_LAYERS):
        for head in range(N_HEADS):
            for key, name in shards.RANKED_BY.items():
                values = every[name].values[layer, head]
                want = explorer.top_positions(values, k)
                one = merged.sel(ranking=key).isel(layer=layer, head=head)
                got = [
                    (int(r), int(p))
                    for r, p in zip(one.cand_row, one.cand_pos, strict=True)
                    if r >= 0
                ]
                assert got == want
                for c, (b, p) in enumerate(want):
                    start = max(0, p - context + 1)
                    window = one[f"cand_window_{key}"].values[c]
                    src = every[shards.CANDIDATE_VALUES[key]].values[layer, head, b]
                    np.testing.assert_array_equal(window[: p - start + 1], src[start : p + 1])


def test_row_sums_are_the_per_row_sums():
    stores = make_shards()
    token = clean_top(stores)
    for ds in stores:
        sums = shards.row_sums(ds, token, int(ds.batch[0]))
        np.testing.assert_array_equal(sums.row_logit_diff.values, ds.logit_diff.values.sum(-1))


def test_clean_candidates_give_the_summary_top_de_clean():
    """head_top_tokens' top_de_clean (the mean of the merged clean candidates) is the summary's
    top_de_clean, bit for bit."""
    stores = make_shards(unmeasured=())
    n_tokens = 3 * ROWS * N_POS
    token = clean_top(stores)
    summary, _ = from_parts(parts_of(stores, token, n_tokens), n_tokens)
    k = token.shape[-1]
    merged, value = merge_top_candidates([top_candidates(d.de_clean, k) for d in stores], k)
    np.testing.assert_array_equal(merged, token)
    np.testing.assert_array_equal(masked_mean(value), summary.top_de_clean.values)


def test_bootstrap_sums_are_the_whole_bootstraps_counts_on_the_shard():
    """A shard's part: the same draws as intervals.resample_blocks over every token, restricted
    to the shard's columns (NaN tokens count as not drawn)."""
    n_tokens, resamples, seed, offset = 5000, 37, 4, 2000
    values = np.random.default_rng(1).normal(size=(3, 1200)).astype(np.float32)
    values[0, 5] = np.nan
    total, kept = shards.bootstrap_sums(values, offset, n_tokens, resamples, seed)
    counts = np.concatenate(
        [c[:, offset : offset + 1200] for c in resample_blocks(n_tokens, resamples, seed)]
    ).astype(np.float64)
    finite = np.isfinite(values)
    np.testing.assert_array_equal(total, np.where(finite, values, 0).astype(np.float64) @ counts.T)
    np.testing.assert_array_equal(kept, finite.astype(np.float64) @ counts.T)
    assert total.shape == (3, resamples)
