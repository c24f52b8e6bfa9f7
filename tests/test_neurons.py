"""Neuron direct effects against full forward passes with hooks, their sum invariant, the
streamed token selection against selecting over all tokens, the reductions by hand, and what
the selected store keeps under each engine.store_tokens."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import xarray as xr

from selfrepair.analysis.mechanisms import at_selected, neuron_reductions
from selfrepair.analysis.reduce import top_token_mask
from selfrepair.engine.self_repair import measure_heads
from selfrepair.mechanisms.neurons import (
    PER_NEURON,
    PER_TOKEN,
    SELECTIONS,
    TopTokens,
    neuron_direct_effects,
    resolve_probes,
    select_neuron_tokens,
    stored_selection,
    sum_error,
)
from selfrepair.models.builders import random_model
from selfrepair.reference.mechanisms import reference_neuron_effects
from selfrepair.variables import ABLATIONS

TOL = 1e-5


def heads_for(model) -> list[tuple[int, ...]]:
    """A middle head read by the last MLP, a first-layer head read by the next MLP, and in
    sequential models a last-layer head read by the MLP of its own layer."""
    heads = [(1, 2), (0, 3, 1)]
    if not model.cfg.parallel_attn_mlp:
        heads.append((2, 0, 2))
    return heads


@pytest.mark.parametrize("ablation", ABLATIONS)
def test_neuron_effects_match_full_forward_reference(tiny_model, tiny_tokens, ablation):
    probes = resolve_probes(tiny_model, heads_for(tiny_model))
    got = neuron_direct_effects(tiny_model, tiny_tokens, ablation, probes, batch_size=4)
    for i, p in enumerate(probes):
        ref = reference_neuron_effects(
            tiny_model, tiny_tokens, ablation, p.layer, p.head, p.mlp_layer
        )
        for name in (*PER_TOKEN, *PER_NEURON):
            err = float(np.abs(got[name].values[i] - ref[name]).max())
            assert err < TOL, (p.label, name, err)
        # The ablation must move the neurons, or the comparison proves little.
        moved = np.abs(ref["neuron_de_ablated"] - ref["neuron_de_clean"]).max()
        assert moved > 1e-2, p.label


def test_neurons_sum_to_layer_direct_effect_minus_bias(tiny_model, tiny_tokens):
    probes = resolve_probes(tiny_model, heads_for(tiny_model))
    ds = neuron_direct_effects(tiny_model, tiny_tokens, "zero", probes)
    assert sum_error(ds) < 1e-5
    # The bias term is real, so leaving it out would break the sum.
    assert float(np.abs(ds.mlp_bias_de).max()) > 1e-3


def test_head_effects_agree_with_the_engine(tiny_model, tiny_tokens):
    """Same resample partners and mean as measure_heads, so the stores line up."""
    probes = resolve_probes(tiny_model, [(1, 2)])
    for ablation in ABLATIONS:
        ours = neuron_direct_effects(tiny_model, tiny_tokens, ablation, probes, batch_size=4)
        engine = measure_heads(tiny_model, tiny_tokens, ablation, heads=[(1, 2)]).sel(
            layer=1, head=2
        )
        for name in ("de_clean", "de_ablated"):
            assert float(np.abs(ours[name].values[0] - engine[name].values).max()) < 1e-6


def test_batch_size_does_not_change_numbers(tiny_model, tiny_tokens):
    probes = resolve_probes(tiny_model, [(1, 2)])
    whole = neuron_direct_effects(tiny_model, tiny_tokens, "resample", probes)
    pieces = neuron_direct_effects(tiny_model, tiny_tokens, "resample", probes, batch_size=1)
    for name in (*PER_TOKEN, *PER_NEURON):
        assert float(np.abs(whole[name] - pieces[name]).max()) < 1e-6, name


def full_shards(model, shards, probes):
    parts = [
        neuron_direct_effects(model, rows, "resample", probes).assign_coords(
            batch=np.arange(start, start + rows.shape[0])
        )
        for start, rows in shards
    ]
    return xr.concat(parts, "batch")


@pytest.mark.parametrize("family", ["gpt2", "pythia"])
def test_streamed_selection_equals_selecting_over_all_tokens(family):
    model = random_model(family)
    tokens = torch.randint(
        1, model.cfg.d_vocab, (9, 12), generator=torch.Generator().manual_seed(4)
    )
    tokens[:, 0] = 0
    shards = [(0, tokens[:5]), (5, tokens[5:])]  # ablation within each shard, as the engine
    probes = resolve_probes(model, [(1, 2), (0, 1)])
    n_tokens = 9 * 11
    got = select_neuron_tokens(
        model, shards, "resample", probes, n_tokens=n_tokens, top_fraction=0.15, batch_size=2
    )
    full = full_shards(model, shards, probes)
    scores = {"head_de": full.de_clean, "mlp_repair": full.mlp_de_ablated - full.mlp_de_clean}
    k = int(np.ceil(0.15 * n_tokens))
    assert got.sizes["token"] == k
    for name in PER_TOKEN:
        assert float(np.abs(got[name] - full[name]).max()) < 1e-6
    for j, sel in enumerate(SELECTIONS):
        mask = top_token_mask(scores[sel].expand_dims(layer=[0]), 0.15).isel(layer=0)
        for i in range(len(probes)):
            flat = np.flatnonzero(mask.values[i])  # token order = row * n_pos + pos
            rows, pos = np.divmod(flat, 11)
            assert np.array_equal(got.token_row.values[i, j], rows), (sel, i)
            assert np.array_equal(got.token_pos.values[i, j], pos), (sel, i)
            for v in PER_NEURON:
                want = full[v].values[i, rows, pos]
                assert np.abs(got[v].values[i, j] - want).max() < 1e-6
    assert sum_error(got) < 1e-5
    assert (
        float(
            np.abs(
                at_selected(got, "de_clean").sel(selection="head_de")
                - got.score.sel(selection="head_de")
            ).max()
        )
        == 0
    )


def test_top_tokens_break_ties_towards_earlier_tokens():
    top = TopTokens(3, {"x": 1})
    top.offer(torch.tensor([1.0, 2.0, 1.0]), torch.tensor([5, 6, 7]), {"x": torch.ones(3, 1)})
    top.offer(torch.tensor([1.0, 3.0]), torch.tensor([1, 2]), {"x": 2 * torch.ones(2, 1)})
    index, score, values = top.in_token_order()
    assert index.tolist() == [1, 2, 6]  # the tie at 1.0 goes to token 1, not 5 or 7
    assert score.tolist() == [1.0, 3.0, 2.0]
    assert values["x"].ravel().tolist() == [2.0, 2.0, 1.0]


@pytest.mark.parametrize(
    ("family", "heads", "message"),
    [
        ("gpt2", [(3, 0)], "L3H0 is out of range"),
        ("gpt2", [(0, 4)], "L0H4 is out of range"),
        ("gpt2", [(0, 0, 5)], "MLP layer 5 is out of range"),
        ("gpt2", [(2, 0, 1)], "does not read the output of head L2H0"),
        ("pythia", [(2, 0)], "does not read the output of head L2H0.*parallel"),
        ("gpt2", [(1, 1), (1, 1, -1)], "listed twice"),
    ],
)
def test_bad_heads_fail_naming_the_head(family, heads, message):
    with pytest.raises(ValueError, match=message):
        resolve_probes(random_model(family), heads)


def synthetic_selection(seed=0, n_tok=7, d_mlp=12) -> xr.Dataset:
    rng = np.random.default_rng(seed)
    clean = rng.normal(size=(1, 1, n_tok, d_mlp)).astype(np.float32)
    ablated = (clean + rng.normal(size=clean.shape)).astype(np.float32)
    ablated[0, 0, 0] = clean[0, 0, 0]  # a token where nothing changes
    de = rng.uniform(0.5, 2, size=(1, 1, n_tok)).astype(np.float32)
    dims = ("head", "selection", "token")
    return xr.Dataset(
        {
            "neuron_de_clean": ((*dims, "neuron"), clean),
            "neuron_de_ablated": ((*dims, "neuron"), ablated),
            "de_clean": (("head", "batch", "pos"), de),
            "mlp_de_clean": (("head", "batch", "pos"), de + 1),
            "mlp_de_ablated": (("head", "batch", "pos"), de + 2),
            "token_row": (dims, np.full((1, 1, n_tok), 10)),
            "token_pos": (dims, np.arange(n_tok)[None, None]),
        },
        coords={
            "head": ["L1H2"],
            "head_layer": ("head", [1]),
            "head_index": ("head", [2]),
            "mlp_layer": ("head", [2]),
            "selection": ["head_de"],
            "batch": [10],
            "token": np.arange(n_tok),
            "neuron": np.arange(d_mlp),
        },
    )


def test_neuron_reductions_match_hand_computation():
    ds = synthetic_selection()
    out = neuron_reductions(ds, thresholds=(0.5, 0.1), top_n=3).isel(head=0, selection=0)
    clean = ds.neuron_de_clean.values[0, 0].astype(np.float64)
    delta = ds.neuron_de_ablated.values[0, 0] - clean
    head_de = ds.de_clean.values[0, 0]
    n_tok, d_mlp = clean.shape
    for k in (1, 2, 5):
        kth = np.array([sorted(delta[t], reverse=True)[k - 1] for t in range(n_tok)])
        for t in (0.5, 0.1):
            want = np.mean(kth >= t * head_de)
            assert out.repair_fraction.sel(rank=k, threshold=t).item() == pytest.approx(want)
        shares = []
        for t in range(1, n_tok):  # token 0 has no change and is skipped
            ranked = np.argsort(-delta[t], kind="stable")
            shares.append(np.abs(delta[t][ranked[:k]]).sum() / np.abs(delta[t]).sum())
        assert out.cumulative_abs_share.sel(rank=k).item() == pytest.approx(np.mean(shares), 1e-6)
        kth_clean = [clean[t][np.argsort(-delta[t], kind="stable")[k - 1]] for t in range(n_tok)]
        assert out.rank_median_clean_de.sel(rank=k).item() == pytest.approx(np.median(kth_clean))
    assert out.n_unchanged.item() == 1
    assert out.cumulative_abs_share.sel(rank=d_mlp).item() == pytest.approx(1.0)
    counts = np.zeros(d_mlp)
    for t in range(n_tok):
        counts[np.argsort(-delta[t], kind="stable")[:3]] += 1
    np.testing.assert_allclose(out.top_n_frequency.values, counts / n_tok, atol=1e-7)
    assert out.max_top_n_frequency.item() == pytest.approx(counts.max() / n_tok)
    np.testing.assert_allclose(out.median_clean_de.values, np.median(clean, 0), atol=1e-7)
    best = np.argmax(delta[1:], 1)
    assert out.top_neuron.values[1:].tolist() == best.tolist()
    np.testing.assert_allclose(
        out.top_neuron_de_ablated.values[1:],
        ds.neuron_de_ablated.values[0, 0, np.arange(1, n_tok), best],
    )
    np.testing.assert_allclose(out.head_de_clean.values, head_de)
    np.testing.assert_allclose(out.mlp_de_ablated.values, head_de + 2)


def test_stored_selection_drops_only_the_neuron_arrays_under_top():
    ds = synthetic_selection()
    assert stored_selection(ds, "all") is ds  # `all`: the store as the selection made it
    top = stored_selection(ds, "top")
    assert set(top.data_vars) == set(ds.data_vars) - set(PER_NEURON)
    assert {"token_row", "token_pos", "de_clean", "mlp_de_clean"} <= set(top.data_vars)
    xr.testing.assert_identical(top, ds.drop_vars(PER_NEURON))
    assert set(PER_NEURON) <= set(ds.data_vars)  # the reductions still read them in memory
    with pytest.raises(ValueError, match="store_tokens must be one of"):
        stored_selection(ds, "some")
