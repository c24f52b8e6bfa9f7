"""The engine on tasks (right-padded prompts, answer positions, counterfactual metric, corrupted
prompts): every variable and every component's change of direct effect against the slow
reference (one full forward pass per ablated head, reference.tasks) on tiny random GPT-2, Pythia
and Llama models; padding never changes a number at a real position; joint ablation of a set of
heads against one full pass with every head of the set patched."""

from __future__ import annotations

import tracemalloc

import numpy as np
import pytest
import torch
import xarray as xr
from tasks_helpers import LENGTHS, padded_task

from selfrepair.ablations import TASK_ABLATIONS, TEXT_ABLATIONS
from selfrepair.analysis.tasks import scored_tokens
from selfrepair.engine.ablation import mean_z
from selfrepair.engine.attribution import RepairSums
from selfrepair.engine.clean import clean_direct_effects, decomposition_error
from selfrepair.engine.inputs import TaskInputs
from selfrepair.engine.self_repair import measure_heads
from selfrepair.engine.sets import measure_sets
from selfrepair.reference.heads import reference_measure_heads
from selfrepair.reference.tasks import TaskReference, reference_task_heads, reference_task_set
from selfrepair.variables import HEAD_VARIABLES, component_kinds

TOL = 1e-4


def per_token(model, tokens, ablation, task, **kwargs):
    """measure_heads with every component's change of direct effect kept on every token."""
    shape = (model.cfg.n_layers, model.cfg.n_heads, tokens.shape[0], tokens.shape[1] - 1)
    sums = RepairSums(model, np.ones(shape, bool), keep_tokens=True)
    ds = measure_heads(model, tokens, ablation, sums=sums, task=task, **kwargs)
    det = sums.detail_dataset()
    comp = np.full((*shape, det.sizes["component"]), np.nan)
    comp[det.ablated_layer, det.ablated_head, det.row, det.pos_index] = det.dde.values
    return ds, comp


@pytest.mark.parametrize("metric", ["logit_diff", "correct_logit"])
@pytest.mark.parametrize("ablation", TASK_ABLATIONS)
def test_every_task_variable_matches_the_full_forward_reference(
    tiny_model, ablation, metric, one_torch_thread
):
    tokens, task = padded_task(tiny_model)
    if metric == "correct_logit":
        task = TaskInputs(None, task.partners, task.real)
    got, comp = per_token(tiny_model, tokens, ablation, task, batch_size=2, heads_per_pass=3)
    ref = TaskReference(tiny_model, tokens, task.counter, task.partners, task.real)
    expected = reference_task_heads(ref, ablation)
    biggest = 0.0
    for (layer, head), values in expected.items():
        for name in HEAD_VARIABLES:
            err = np.abs(got[name].values[layer, head] - values[name]).max()
            assert err < TOL, (name, layer, head, err)
        assert np.abs(comp[layer, head] - values["components"]).max() < TOL, (layer, head)
        biggest = max(biggest, float(np.abs(values["logit_diff"]).max()))
    assert biggest > 0.05  # the ablation does something, or the comparison proves little


def test_the_metric_is_the_answer_minus_the_counterfactual(tiny_model, one_torch_thread):
    """logit_diff's clean metric is the full logits' answer minus counterfactual, and the
    components' direct effects add up to it on every token."""
    tokens, task = padded_task(tiny_model)
    diff = clean_direct_effects(tiny_model, tokens, counter=task.counter)
    with torch.no_grad():
        logits = tiny_model(tokens[:, :-1]).double()
    expected = logits.gather(-1, tokens[:, 1:, None]) - logits.gather(-1, task.counter[..., None])
    np.testing.assert_allclose(diff.logit_clean.values, expected[..., 0].cpu(), atol=1e-4)
    assert decomposition_error(diff) < 1e-4
    plain = clean_direct_effects(tiny_model, tokens)
    assert np.abs(plain.logit_clean.values - diff.logit_clean.values).max() > 0.1


@pytest.mark.parametrize("ablation", ["corrupted", "zero"])
def test_padding_never_changes_a_number_at_a_real_position(tiny_model, ablation, one_torch_thread):
    """Each prompt run alone, unpadded, equals the same prompt in the padded batch at every
    position it predicts from real tokens (the ablations that do not mix rows)."""
    tokens, task = padded_task(tiny_model)
    batch = measure_heads(tiny_model, tokens, ablation, batch_size=3, task=task)
    clean = clean_direct_effects(tiny_model, tokens, counter=task.counter)
    for i, length in enumerate(LENGTHS):
        rows = slice(i, i + 1)
        alone_task = TaskInputs(
            task.counter[rows, : length - 1], task.partners[rows, :length], task.real[rows, :length]
        )
        alone = measure_heads(tiny_model, tokens[rows, :length], ablation, task=alone_task)
        for name in HEAD_VARIABLES:
            here = batch[name].values[:, :, i, : length - 1]
            assert np.abs(alone[name].values[:, :, 0] - here).max() < 1e-5, (i, name)
        one = clean_direct_effects(tiny_model, tokens[rows, :length], counter=alone_task.counter)
        for name in ("logit_clean", "de_head", "loss"):
            here = clean[name].isel(batch=i, pos=slice(0, length - 1)).values
            assert np.abs(one[name].isel(batch=0).values - here).max() < 1e-5, (i, name)


def test_mean_ablation_takes_the_mean_over_real_positions_only(tiny_model, one_torch_thread):
    """The masked mean z equals the mean over the z of each unpadded prompt's positions that
    predict a real token (its last token, the answer, is only a target: left out), and other
    padding ids leave every number at a real position unchanged."""
    tokens, task = padded_task(tiny_model)
    layers = range(tiny_model.cfg.n_layers)
    got = mean_z(tiny_model, tokens, layers, 2, real=task.real)
    for layer in layers:
        read, whole = [], []
        for i, length in enumerate(LENGTHS):
            _, cache = tiny_model.run_with_cache(tokens[i : i + 1, : length - 1])
            read.append(cache[f"blocks.{layer}.attn.hook_z"][0].double())
            _, cache = tiny_model.run_with_cache(tokens[i : i + 1, :length])
            whole.append(cache[f"blocks.{layer}.attn.hook_z"][0].double())
        expected = torch.cat(read).mean(0)
        assert (got[layer].double() - expected).abs().max() < 1e-5, layer
        # The mean with the answers' positions: far off, so this test tells them apart.
        assert (got[layer].double() - torch.cat(whole).mean(0)).abs().max() > 1e-4, layer
    other_tokens, other = padded_task(tiny_model, pad=7)
    a = measure_heads(tiny_model, tokens, "mean", task=task)
    b = measure_heads(tiny_model, other_tokens, "mean", task=other)
    real_pos = task.real[:, 1:].numpy()
    for name in HEAD_VARIABLES:
        diff = np.abs(a[name].values - b[name].values)[:, :, real_pos]
        assert diff.max() < 1e-5, name
    assert not np.array_equal(a.logit_clean.values, b.logit_clean.values)  # pads do differ


@pytest.mark.parametrize("ablation", TASK_ABLATIONS)
def test_frozen_layernorm_on_a_task_matches_the_full_forward_reference(
    tiny_model, ablation, one_torch_thread
):
    """<kind>-frozen-ln on a task (logit_diff, padded rows, corrupted partners): every variable
    and component against full passes with every LayerNorm scale hooked to the clean run's."""
    tokens, task = padded_task(tiny_model, seed=6)
    got, comp = per_token(
        tiny_model, tokens, ablation, task, batch_size=2, heads_per_pass=3, freeze_ln=True
    )
    ref = TaskReference(tiny_model, tokens, task.counter, task.partners, task.real)
    expected = reference_task_heads(ref, ablation, freeze_ln=True)
    free = reference_task_heads(ref, ablation, heads=[(0, 1)])[0, 1]
    for (layer, head), values in expected.items():
        for name in HEAD_VARIABLES:
            err = np.abs(got[name].values[layer, head] - values[name]).max()
            assert err < TOL, (name, layer, head, err)
        assert np.abs(comp[layer, head] - values["components"]).max() < TOL, (layer, head)
        assert np.abs(values["sr_ln"]).max() < 1e-5  # frozen: LayerNorm repairs nothing
    assert np.abs(free["sr_ln"]).max() > 1e-3  # ...which it does when free


SETS = {"across": [(0, 1), (1, 0), (1, 2)], "late": [(2, 3), (2, 0)], "one": [(1, 1)]}


@pytest.mark.parametrize("ablation", TASK_ABLATIONS)
def test_joint_ablation_matches_one_full_pass_with_the_set_patched(
    tiny_model, ablation, one_torch_thread
):
    tokens, task = padded_task(tiny_model, seed=3)
    got = measure_sets(tiny_model, tokens, ablation, SETS, batch_size=2, task=task)
    ref = TaskReference(tiny_model, tokens, task.counter, task.partners, task.real)
    assert_sets_match(got, ref, ablation)
    assert float(np.abs(got.logit_diff).max()) > 0.05


def assert_sets_match(got, ref: TaskReference, ablation: str) -> None:
    """Each set of SETS in measure_sets' `got` equals one full forward pass with it patched."""
    for name, heads in SETS.items():
        expected = reference_task_set(ref, ablation, heads)
        one = got.sel(set=name)
        for variable in HEAD_VARIABLES:
            err = np.abs(one[variable].values - expected[variable]).max()
            assert err < TOL, (name, variable, err)
        assert np.abs(one.dde.values - expected["components"]).max() < TOL, name


@pytest.mark.parametrize("ablation", TEXT_ABLATIONS)
def test_joint_ablation_on_running_text_matches_full_forward_passes(
    tiny_model, tiny_tokens, ablation, one_torch_thread
):
    """Running text (no task: the correct token's centred logit at every position, resample's
    partner the next row): each set against one full pass with the set patched, and a one-head
    set against the text reference of that head (reference.heads.reference_measure_heads)."""
    tokens = tiny_tokens.to(tiny_model.W_U.device)
    got = measure_sets(tiny_model, tokens, ablation, SETS, batch_size=4)
    assert got.sizes["pos"] == tokens.shape[1] - 1  # every token kept
    ref = TaskReference(tiny_model, tokens)
    assert_sets_match(got, ref, ablation)
    text = reference_measure_heads(tiny_model, tokens, ablation, heads=SETS["one"])
    for variable in HEAD_VARIABLES:
        want = text[variable].values[1, 1]
        assert np.abs(got[variable].sel(set="one").values - want).max() < TOL, variable
    assert float(np.abs(got.logit_diff).max()) > 0.05


def test_joint_ablation_parts_add_up_and_one_head_is_measure_heads(tiny_model, one_torch_thread):
    tokens, task = padded_task(tiny_model, seed=4)
    got = measure_sets(tiny_model, tokens, "corrupted", SETS, task=task)
    kinds = np.array(component_kinds(tiny_model.cfg.n_layers, tiny_model.cfg.n_heads))
    dde = got.dde.values
    np.testing.assert_allclose(dde[..., kinds == "head"].sum(-1), got.sr_heads.values, atol=1e-5)
    np.testing.assert_allclose(dde[..., kinds == "mlp"].sum(-1), got.sr_mlps.values, atol=1e-5)
    np.testing.assert_allclose(dde.sum(-1), got.self_repair.values, atol=1e-5)
    parts = got.sr_heads + got.sr_mlps + got.sr_ln
    np.testing.assert_allclose(parts.values, got.self_repair.values, atol=1e-5)
    single = measure_heads(tiny_model, tokens, "corrupted", heads=[(1, 1)], task=task)
    for variable in HEAD_VARIABLES:
        np.testing.assert_allclose(
            got[variable].sel(set="one").values, single[variable].values[1, 1], atol=1e-5
        )


def test_joint_ablation_keeps_only_the_scored_tokens_in_float32_bitwise(
    tiny_model, one_torch_thread
):
    """measure_sets(scored=) is scored_tokens of the full result bitwise, and its memory is the
    kept tokens' float32 arrays: under half of what every token's float32 `dde` alone takes."""
    n_rows = 256
    tokens, task = padded_task(tiny_model, seed=5, lengths=(12, 9) * (n_rows // 2))
    scored = np.zeros((n_rows, 11), bool)
    scored[:, 7] = scored[::3, 2] = True
    full = measure_sets(tiny_model, tokens, "corrupted", SETS, batch_size=32, task=task)
    tracemalloc.start()
    try:
        got = measure_sets(
            tiny_model, tokens, "corrupted", SETS, batch_size=32, task=task, scored=scored
        )
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    xr.testing.assert_identical(got, scored_tokens(full, scored))
    assert got.dde.dtype == np.float32
    assert peak < full.dde.nbytes / 2, (peak, full.dde.nbytes)
