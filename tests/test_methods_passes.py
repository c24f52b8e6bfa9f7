"""The method comparison's exact passes (engine.methods) on tiny random GPT-2, Pythia and Llama:
each restarted pass against a full forward pass with the same hooks, and the shortcuts that make
them cheap (the clean residual streams from a pass without logits, the unembedding built once,
a pass with the set and a later candidate restarted from the set's own pass) bitwise against
the routines they replace."""

from __future__ import annotations

from functools import partial

import numpy as np
import pytest
import torch
from tasks_helpers import padded_task

from selfrepair.engine.ablation import ablation_chunks
from selfrepair.engine.methods import (
    answer_logits,
    clean_residuals,
    logits_at,
    token_index,
    unembedding,
)
from selfrepair.models.readout import readout

pytestmark = pytest.mark.usefixtures("one_torch_thread")

MEMBERS = {0: [1], 1: [0]}  # the set S: heads in two layers


def _chunk(model, ablation="corrupted"):
    tokens, task = padded_task(model, seed=3)
    layers = range(model.cfg.n_layers)
    ro = readout(model)
    (chunk,) = ablation_chunks(
        model, tokens, ablation, layers, ro, batch_size=len(tokens), task=task
    )
    scored = task.real[:, 1:].clone()
    scored[:, :2] = False
    index = tuple(x.to(tokens.device) for x in token_index(scored))
    return tokens, chunk, index


def _full_pass_logits(model, tokens, chunk, by_layer, index) -> torch.Tensor:
    """The slow reference: every position from the embedding on, z patched by hooks, the full
    unembedding, then the answer tokens picked."""

    def patch(z, hook, heads):
        z = z.clone()
        z[:, :, heads] = chunk.z_new(hook.layer(), heads).to(z.dtype)
        return z

    hooks = [(f"blocks.{la}.attn.hook_z", partial(patch, heads=hs)) for la, hs in by_layer.items()]
    with torch.no_grad():
        logits = model.run_with_hooks(tokens[:, :-1], fwd_hooks=hooks)
    return logits[index[0], index[1]]


def test_clean_residuals_are_run_with_caches_bitwise(tiny_model):
    tokens, _, _ = _chunk(tiny_model)
    names = [f"blocks.{la}.hook_resid_pre" for la in range(tiny_model.cfg.n_layers)]
    _, cache = tiny_model.run_with_cache(tokens[:, :-1], names_filter=names)
    got = clean_residuals(tiny_model, tokens)
    assert len(got) == len(names)
    for name, resid in zip(names, got, strict=True):
        assert torch.equal(resid, cache[name]), name


def test_the_logits_at_the_answers_are_the_unembed_modules_bitwise(tiny_model):
    tokens, _, index = _chunk(tiny_model)
    final = tiny_model(tokens[:, :-1], stop_at_layer=tiny_model.cfg.n_layers)
    with torch.no_grad():
        want = tiny_model.unembed(tiny_model.ln_final(final[index[0], index[1]][:, None]))[:, 0]
        w = unembedding(tiny_model)
        assert torch.equal(logits_at(tiny_model, final, index, w), want)
        assert torch.equal(logits_at(tiny_model, final, index), want)


@pytest.mark.parametrize("candidate", [(0, 2), (1, 3), (2, 1)])
def test_restarted_passes_equal_full_forward_passes(tiny_model, candidate):
    """Single (u alone), the set, and conditional (S + u) passes: restarted at the first layer
    ablated from the clean stream, or above the set's first layer from the set's pass; the
    latter bitwise the former."""
    model = tiny_model
    tokens, chunk, index = _chunk(model)
    resid, w = clean_residuals(model, tokens), unembedding(model)
    la, h = candidate
    both = {**MEMBERS, la: sorted({*MEMBERS.get(la, []), h})}
    for by_layer in ({}, {la: [h]}, MEMBERS, both):
        got = answer_logits(model, resid, chunk, by_layer, index, unembed=w)
        want = _full_pass_logits(model, tokens, chunk, by_layer, index)
        np.testing.assert_allclose(got.numpy(), want.numpy(), rtol=1e-5, atol=1e-5)
    kept: dict[int, torch.Tensor] = {}
    with_set = answer_logits(model, resid, chunk, MEMBERS, index, unembed=w, keep=kept)
    assert sorted(kept) == list(range(min(MEMBERS), model.cfg.n_layers))
    assert torch.equal(kept[min(MEMBERS)], resid[min(MEMBERS)])
    assert torch.equal(
        with_set, answer_logits(model, kept, chunk, MEMBERS, index, start=model.cfg.n_layers - 1)
    )
    from_first = answer_logits(model, resid, chunk, both, index, unembed=w)
    from_set = answer_logits(model, kept, chunk, both, index, start=la, unembed=w)
    assert torch.equal(from_set, from_first)
    assert not torch.equal(from_set, with_set)  # the candidate's ablation changes the logits
