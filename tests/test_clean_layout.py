"""engine.store_tokens for the clean cache (analysis.clean_layout): a `top` clean store keeps each
head's best tokens of its shard instead of its DE on every token, and head_top_tokens makes the
same store from either layout; checked against reduce.top_token_mask over every token, on
synthetic shards with ties and shards smaller than k, and on a real model's clean_cache stores."""

from __future__ import annotations

import numpy as np
import pytest
import xarray as xr

from selfrepair.analysis.attribution import top_token_indices
from selfrepair.analysis.clean_layout import (
    clean_top_layout,
    merge_top_candidates,
    shard_candidates,
    top_candidates,
)
from selfrepair.engine.clean import decomposition_error, total_direct_effect
from selfrepair.models.builders import build_model
from selfrepair.stages import store
from selfrepair.stages.clean import clean_cache
from selfrepair.stages.job import ModelJob
from selfrepair.stages.repair import head_top_tokens
from selfrepair.variables import CLEAN_SUMMED

N_POS = 5


def de_shards(rows=(4, 1, 3), seed=0) -> list[xr.DataArray]:
    """de_head shards (layer, head, batch, pos) with global rows, exact ties within and across
    shards, and one shard of fewer tokens than k."""
    rng = np.random.default_rng(seed)
    out, start = [], 0
    for n in rows:
        v = rng.normal(size=(2, 3, n, N_POS)).astype(np.float32)
        v[0, 0, :, :2] = 0.5  # ties, in every shard
        v[1, 2] = np.round(v[1, 2])  # many ties
        out.append(
            xr.DataArray(
                v,
                dims=("layer", "head", "batch", "pos"),
                coords={"batch": np.arange(start, start + n)},
            )
        )
        start += n
    return out


@pytest.mark.parametrize("k", [1, 4, 9, 40])
def test_merged_candidates_are_the_top_tokens_of_every_token(k):
    shards = de_shards()
    every = xr.concat(shards, "batch")
    fraction = k / (every.sizes["batch"] * N_POS)
    expected = top_token_indices(every, fraction).values
    token, value = merge_top_candidates([top_candidates(s, k) for s in shards], k)
    np.testing.assert_array_equal(token, expected)
    flat = every.transpose("layer", "head", "batch", "pos").values.reshape(2, 3, -1)
    np.testing.assert_array_equal(value, np.take_along_axis(flat, expected, -1))
    assert token.dtype == np.int64


def test_candidates_keep_at_most_k_tokens_best_first_with_their_numbers():
    (shard,) = de_shards(rows=(3,))
    shard = shard.assign_coords(batch=shard.batch + 7)  # a later shard: global rows from 7
    got = top_candidates(shard, 4)
    assert got.sizes["top_candidate"] == 4 and got.top_candidate_token.dtype == np.int32
    for layer in range(2):
        for head in range(3):
            tokens = got.top_candidate_token.values[layer, head]
            rows, pos = np.divmod(tokens, N_POS)
            values = shard.values[layer, head, rows - 7, pos]
            np.testing.assert_array_equal(values, got.top_candidate_de_head.values[layer, head])
            assert np.all(np.diff(values) <= 0)  # best first
            rest = np.delete(shard.values[layer, head].ravel(), (rows - 7) * N_POS + pos)
            assert rest.max() <= values.min()  # and the best ones
    assert top_candidates(shard, 100).sizes["top_candidate"] == 3 * N_POS  # the whole shard


def clean_dataset(de: xr.DataArray) -> xr.Dataset:
    """A clean_direct_effects-like Dataset around de_head: the other parts and the logit."""
    rng = np.random.default_rng(1)
    shape = (de.sizes["batch"], N_POS)
    parts = {n: (("batch", "pos"), rng.normal(size=shape).astype("f4")) for n in PER_TOKEN}
    layers = {
        n: (("layer", "batch", "pos"), rng.normal(size=(2, *shape)).astype("f4"))
        for n in ("de_attn_bias", "de_mlp")
    }
    ds = xr.Dataset({"de_head": de, **parts, **layers}, attrs={"model": "toy"})
    return ds.assign(logit_clean=total_direct_effect(ds))


PER_TOKEN = ("de_embed", "de_pos_embed", "de_unembed_bias")


def test_top_layout_keeps_the_decomposition_and_reads_back_as_either_layout():
    de = de_shards(rows=(4,))[0]
    ds = clean_dataset(de)
    top = clean_top_layout(ds, 6)
    assert top.attrs["store_tokens"] == "top"
    for name, dims in CLEAN_SUMMED.items():  # per layer: only the sums the check takes
        assert name not in top
        np.testing.assert_array_equal(top[f"{name}_sum"], ds[name].sum(dims))
    np.testing.assert_array_equal(total_direct_effect(top), total_direct_effect(ds))
    assert decomposition_error(top) == decomposition_error(ds)
    xr.testing.assert_identical(shard_candidates(top, 6), shard_candidates(ds, 6))
    xr.testing.assert_identical(shard_candidates(top, 2), shard_candidates(ds, 2))
    with pytest.raises(ValueError, match=r"keeps each head's 6 best tokens but the top tokens "):
        shard_candidates(top, 7, where="clean/shard-000.zarr")


@pytest.fixture(scope="module")
def clean_stores(tmp_path_factory):
    """One tiny GPT-2's clean_cache stores of two shards, under `all` and `top`."""
    root = tmp_path_factory.mktemp("clean")
    checkpoint = str(root / "tiny")
    build_model("gpt2", 64, 2, 32, 4, 12, seed=0).save_pretrained(checkpoint)
    rows = np.random.default_rng(0).integers(1, 64, (10, 12), dtype=np.int32)
    rows[:, 0] = 0
    tokens = root / "tokens.zarr"
    store.write_zarr(xr.Dataset({"tokens": (("row", "tok"), rows)}), tokens, chunks={"row": 5})
    k = 28  # top_fraction 0.25 of 10 x 11 predictions
    out = {"all": [], "top": []}
    for bounds in ((0, 6), (6, 10)):
        job = ModelJob(
            tokens=str(tokens),
            shards=bounds,
            entry={"name": "tiny"},
            checkpoint=checkpoint,
            device="cpu",
            dtype="float32",
            batch_size=3,
        )
        for layout, top_k in (("all", None), ("top", k)):
            path = root / f"{layout}-{bounds[0]}.zarr"
            clean_cache(job, out=str(path), attrs={"shard": bounds[0]}, top_k=top_k)
            out[layout].append(str(path))
    return root, out


def test_head_top_tokens_is_the_same_store_from_either_layout(clean_stores):
    root, paths = clean_stores
    made = {}
    for layout in ("all", "top", "mixed"):
        shards = paths["top"][:1] + paths["all"][1:] if layout == "mixed" else paths[layout]
        out = root / layout / "top_tokens.zarr"  # the same name: the store records it
        head_top_tokens(shards=shards, top_fraction=0.25, out=str(out), attrs={}, heads=[[1, 2]])
        made[layout] = store.open_zarr(out).load()
    assert made["all"].token.shape == (2, 4, 28) and made["all"].token.dtype == np.int32
    for layout in ("top", "mixed"):
        xr.testing.assert_identical(made[layout], made["all"])
    assert np.isnan(made["top"].top_de_clean.values).sum() == 7  # heads outside `heads`
    # the top store is smaller: de_head (8 heads) gone, 28 candidates of 66 and 44 tokens kept
    for top, every in zip(paths["top"], paths["all"], strict=True):
        a, t = store.open_zarr(every), store.open_zarr(top)
        assert t.top_candidate_de_head.shape == (2, 4, 28)
        assert decomposition_error(t.load()) == decomposition_error(a.load())
