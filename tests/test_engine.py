"""measure_heads against the slow full-forward reference, and its algebraic invariants."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from selfrepair.engine.ablation import mean_z
from selfrepair.engine.self_repair import measure_heads
from selfrepair.models.builders import random_model
from selfrepair.reference.heads import reference_measure_heads
from selfrepair.variables import ABLATIONS, HEAD_VARIABLES

TOL = 1e-4


def max_abs_diff(a, b) -> float:
    a, b = np.asarray(a), np.asarray(b)
    assert np.array_equal(np.isnan(a), np.isnan(b)), "NaN patterns differ"
    return float(np.nanmax(np.abs(a - b)))


@pytest.mark.parametrize("ablation", ABLATIONS)
def test_every_variable_matches_full_forward_reference(tiny_model, tiny_tokens, ablation):
    got = measure_heads(tiny_model, tiny_tokens, ablation, batch_size=4, heads_per_pass=3)
    ref = reference_measure_heads(tiny_model, tiny_tokens, ablation)
    for name in (*HEAD_VARIABLES, "logit_clean", "ln_scale_clean"):
        assert got[name].dtype == np.float32
        assert max_abs_diff(got[name], ref[name]) < TOL, name
    # The ablation must actually do something, or the comparison above proves little.
    assert float(np.abs(ref.logit_diff).max()) > 0.05


@pytest.mark.parametrize("family", ["gpt2", "pythia", "llama"])
def test_unprocessed_weights_match_reference(family):
    """LayerNorm weights and biases left in place (no fold_ln, no centring) give the same
    decomposition: the readout handles them rather than assuming a processed model."""
    model = random_model(family, process=False)
    tokens = torch.randint(
        1, model.cfg.d_vocab, (4, 10), generator=torch.Generator().manual_seed(3)
    )
    tokens[:, 0] = 0
    got = measure_heads(model, tokens, "mean")
    ref = reference_measure_heads(model, tokens, "mean")
    for name in HEAD_VARIABLES:
        assert max_abs_diff(got[name], ref[name]) < TOL, name


@pytest.mark.parametrize("ablation", ABLATIONS)
def test_decomposition_sums_to_self_repair(tiny_model, tiny_tokens, ablation):
    ds = measure_heads(tiny_model, tiny_tokens, ablation)
    total = ds.sr_heads + ds.sr_mlps + ds.sr_ln
    assert float(np.abs(total - ds.self_repair).max()) < 1e-5
    eq1 = ds.logit_diff - (ds.de_ablated - ds.de_clean)
    assert float(np.abs(eq1 - ds.self_repair).max()) < 1e-6
    assert float(np.abs(ds.sr_ln).max()) > 0  # the LayerNorm part is computed, not assumed


def test_parallel_last_layer_heads_have_no_downstream_repair():
    model = random_model("pythia")
    tokens = torch.randint(
        1, model.cfg.d_vocab, (4, 10), generator=torch.Generator().manual_seed(2)
    )
    tokens[:, 0] = 0
    last = model.cfg.n_layers - 1
    ds = measure_heads(model, tokens, "resample").sel(layer=last)
    assert np.all(ds.sr_heads.values == 0) and np.all(ds.sr_mlps.values == 0)
    ref = reference_measure_heads(model, tokens, "resample").sel(layer=last)
    assert float(np.abs(ref.sr_heads).max()) < 1e-5 and float(np.abs(ref.sr_mlps).max()) < 1e-5
    # ... and all their self-repair is LayerNorm.
    assert float(np.abs(ds.sr_ln - ds.self_repair).max()) < 1e-6


def test_sequential_last_layer_mlp_still_repairs():
    """In a GPT-2 style block the MLP of the ablated layer reads the ablated stream."""
    model = random_model("gpt2")
    tokens = torch.randint(
        1, model.cfg.d_vocab, (4, 10), generator=torch.Generator().manual_seed(2)
    )
    tokens[:, 0] = 0
    ds = measure_heads(model, tokens, "zero").sel(layer=model.cfg.n_layers - 1)
    assert np.all(ds.sr_heads.values == 0)
    assert float(np.abs(ds.sr_mlps).max()) > 1e-3


@pytest.mark.parametrize("ablation", ABLATIONS)
def test_batch_size_and_head_chunking_do_not_change_numbers(tiny_model, tiny_tokens, ablation):
    whole = measure_heads(tiny_model, tiny_tokens, ablation)
    pieces = measure_heads(tiny_model, tiny_tokens, ablation, batch_size=1, heads_per_pass=1)
    odd = measure_heads(tiny_model, tiny_tokens, ablation, batch_size=4, heads_per_pass=3)
    for name in HEAD_VARIABLES:
        assert max_abs_diff(whole[name], pieces[name]) < 1e-5, name
        assert max_abs_diff(whole[name], odd[name]) < 1e-5, name


def test_subset_of_heads_leaves_others_nan_and_matches_all(tiny_model, tiny_tokens):
    heads = [(0, 1), (2, 3), (2, 0)]
    sub = measure_heads(tiny_model, tiny_tokens, "resample", heads=heads)
    full = measure_heads(tiny_model, tiny_tokens, "resample")
    measured = np.zeros((tiny_model.cfg.n_layers, tiny_model.cfg.n_heads), bool)
    for layer, head in heads:
        measured[layer, head] = True
    for name in HEAD_VARIABLES:
        values = sub[name].values
        assert np.isnan(values[~measured]).all()
        # 1e-5, as for batch and chunk sizes: CUDA kernels pick their reduction order by shape.
        assert max_abs_diff(values[measured], full[name].values[measured]) < 1e-5


def test_resample_source_default_is_next_row_and_custom_source_is_used(tiny_model, tiny_tokens):
    n = tiny_tokens.shape[0]
    ds = measure_heads(tiny_model, tiny_tokens, "resample", heads=[(1, 1)])
    assert ds.resample_source.values.tolist() == [(i + 1) % n for i in range(n)]
    # Row order reversed with the matching source gives the same per-row numbers.
    perm = torch.arange(n - 1, -1, -1)
    inv_source = torch.tensor([perm.tolist().index((int(p) + 1) % n) for p in perm])
    rev = measure_heads(
        tiny_model, tiny_tokens[perm], "resample", heads=[(1, 1)], source=inv_source
    )
    assert max_abs_diff(rev.self_repair.values[:, :, ::-1], ds.self_repair.values) < 1e-5


def test_mean_ablation_can_exclude_bos(tiny_model, tiny_tokens):
    with_bos = measure_heads(tiny_model, tiny_tokens, "mean", heads=[(0, 0)])
    without = measure_heads(tiny_model, tiny_tokens, "mean", heads=[(0, 0)], mean_include_bos=False)
    ref = reference_measure_heads(tiny_model, tiny_tokens, "mean", [(0, 0)], mean_include_bos=False)
    assert max_abs_diff(without.self_repair, ref.self_repair) < TOL
    assert max_abs_diff(with_bos.self_repair, without.self_repair) > 1e-4


def test_mean_z_averages_the_positions_the_pass_reads(tiny_model, tiny_tokens):
    """mean_z is the mean of z over the positions the measured pass reads, tokens[:, :-1] (the
    last token is only a target), by hand from TransformerLens' own pass over them: on rows of 4
    tokens the last position would weigh a quarter of a mean over whole rows."""
    rows = tiny_tokens[:, :4]
    layers = range(tiny_model.cfg.n_layers)
    _, read = tiny_model.run_with_cache(rows[:, :-1])
    _, whole = tiny_model.run_with_cache(rows)
    for include_bos in (True, False):
        got = mean_z(tiny_model, rows, layers, batch_size=4, include_bos=include_bos)
        first = 0 if include_bos else 1
        for layer in layers:
            name = f"blocks.{layer}.attn.hook_z"
            expected = read[name][:, first:].double().mean((0, 1))
            assert (got[layer].double() - expected).abs().max() < 1e-5, (include_bos, layer)
            # What the mean over whole rows gives: far off, so this test tells them apart.
            rows_mean = whole[name][:, first:].double().mean((0, 1))
            assert (got[layer].double() - rows_mean).abs().max() > 1e-3, (include_bos, layer)
    with pytest.raises(ValueError, match="no position to average z over"):
        mean_z(tiny_model, rows[:, :2], layers, batch_size=4, include_bos=False)


def test_model_is_not_modified(tiny_tokens):
    model = random_model("gpt2")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    measure_heads(model, tiny_tokens[:, :10], "mean")
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert not any(hp._forward_hooks for hp in model.hook_dict.values())


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"heads": [(3, 0)]}, "out of range"),
        ({"heads": [(0, 4)]}, "out of range"),
        ({"ablation": "noise"}, "unknown ablation"),
    ],
)
def test_bad_arguments_fail_clearly(tiny_tokens, kwargs, message):
    model = random_model("gpt2")
    with pytest.raises(ValueError, match=message):
        measure_heads(model, tiny_tokens, **kwargs)


def test_rows_longer_than_context_fail_clearly():
    model = random_model("gpt2", n_ctx=8)
    with pytest.raises(ValueError, match="exceed the context"):
        measure_heads(model, torch.zeros(2, 12, dtype=torch.long))


def test_nan_in_weights_names_the_layer():
    model = random_model("gpt2")
    with torch.no_grad():
        model.blocks[1].mlp.W_in[0, 0] = float("nan")
    tokens = torch.randint(1, model.cfg.d_vocab, (3, 8), generator=torch.Generator().manual_seed(0))
    with pytest.raises(FloatingPointError, match="after layer 1"):
        measure_heads(model, tokens, "zero")


@pytest.mark.parametrize("ablation", ABLATIONS)
def test_frozen_layernorm_matches_reference(tiny_model, tiny_tokens, ablation):
    got = measure_heads(
        tiny_model, tiny_tokens, ablation, batch_size=4, heads_per_pass=3, freeze_ln=True
    )
    ref = reference_measure_heads(tiny_model, tiny_tokens, ablation, freeze_ln=True)
    for name in HEAD_VARIABLES:
        assert max_abs_diff(got[name], ref[name]) < TOL, name
    assert float(np.abs(got.sr_ln).max()) < 1e-5  # nothing is left to the final LayerNorm
    assert float(np.abs(got.ln_scale_ablated - got.ln_scale_clean).max()) == 0
    # Freezing changes the downstream repair itself, not only the final LN term.
    free = measure_heads(tiny_model, tiny_tokens, ablation)
    assert max_abs_diff(free.sr_heads + free.sr_mlps, got.sr_heads + got.sr_mlps) > 1e-4
