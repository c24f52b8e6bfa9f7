"""The fused block forward against TransformerLens' own block, hook by hook."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from selfrepair.engine.self_repair import measure_heads
from selfrepair.models.blocks import (
    FUSED_HOOKS,
    cached_weights,
    can_fuse,
    run_block,
    run_mlp,
    unsupported_reason,
)
from selfrepair.models.builders import random_model
from selfrepair.models.forward import embed
from selfrepair.variables import HEAD_VARIABLES

TOL = 2e-5


def record(block, names, run):
    """Run `run()` with a hook on each named hook point of the block; return what they saw."""
    seen = {}
    modules = dict(block.named_modules())

    def keep(x, hook, name):
        seen[name] = x.detach().clone()

    hooks = [(modules[n], lambda x, hook, n=n: keep(x, hook, n)) for n in names if n in modules]
    for hp, fn in hooks:
        hp.add_hook(fn)
    try:
        out = run()
    finally:
        for hp, _ in hooks:
            hp.remove_hooks()
    return out, seen


def block_inputs(model, n_rows=3, n_pos=12):
    tokens = torch.randint(
        1, model.cfg.d_vocab, (n_rows, n_pos), generator=torch.Generator().manual_seed(5)
    )
    with torch.no_grad():
        return embed(model, tokens)


@pytest.mark.parametrize("process", [True, False])
def test_fused_block_equals_transformer_lens_at_every_hook(family, process):
    model = random_model(family, process=process)
    resid = block_inputs(model)
    names = sorted(FUSED_HOOKS)
    with torch.no_grad():
        for block in model.blocks:
            assert unsupported_reason(block) is None
            want, want_hooks = record(block, names, lambda b=block, r=resid: b(r))
            got, got_hooks = record(block, names, lambda b=block, r=resid: run_block(b, r))
            assert float((got - want).abs().max()) < TOL
            assert set(got_hooks) == set(want_hooks) and len(want_hooks) >= 10
            for name, value in want_hooks.items():
                assert got_hooks[name].shape == value.shape, name
                assert float((got_hooks[name] - value).abs().max()) < TOL, name
            resid = want


def test_fused_block_without_hooks_equals_transformer_lens(family):
    """With nothing hooked the norms take the fused kernels; the output is unchanged."""
    model = random_model(family)
    resid = block_inputs(model)
    with torch.no_grad():
        for block in model.blocks:
            want = block(resid)
            assert float((run_block(block, resid) - want).abs().max()) < TOL
            mid = resid + block.attn(block.ln1(resid), block.ln1(resid), block.ln1(resid))
            want_mlp = block.apply_mlp(block.ln2(mid))
            assert float((run_mlp(block, mid) - want_mlp).abs().max()) < TOL
            resid = want


def test_replacing_hooks_act_as_in_transformer_lens(family):
    """A hook that replaces a value (the engine freezes LayerNorm scales this way) changes the
    fused block exactly as it changes TransformerLens' block."""
    model = random_model(family)
    resid = block_inputs(model)
    block = model.blocks[1]

    def double(x, hook):
        return 2 * x

    with torch.no_grad():
        plain = block(resid)
        for name in ("ln1.hook_scale", "ln2.hook_scale", "attn.hook_z", "mlp.hook_post"):
            with model.hooks(fwd_hooks=[(f"blocks.1.{name}", double)]):
                want, got = block(resid), run_block(block, resid)
            assert float((want - plain).abs().max()) > 1e-3, name  # the hook matters
            assert float((got - want).abs().max()) < TOL, name


def test_other_hooks_fall_back_to_transformer_lens():
    model = random_model("gpt2")
    resid = block_inputs(model)
    block = model.blocks[0]
    calls = []
    assert can_fuse(block)
    hook = ("blocks.0.attn.hook_pattern", lambda x, hook: calls.append(x.shape))
    with torch.no_grad(), model.hooks(fwd_hooks=[hook]):
        assert not can_fuse(block)
        run_block(block, resid)
    assert len(calls) == 1  # the pattern only exists in TransformerLens' attention
    assert can_fuse(block)


@pytest.mark.parametrize(
    ("field", "value", "reason"),
    [
        ("positional_embedding_type", "alibi", "positional embedding"),
        ("attn_scores_soft_cap", 30.0, "attention extras"),
        ("use_normalization_before_and_after", True, "post-norm"),
    ],
)
def test_unsupported_architectures_are_named(field, value, reason):
    model = random_model("gpt2")
    setattr(model.cfg, field, value)  # the blocks share the model's config
    assert reason in unsupported_reason(model.blocks[0])
    assert not can_fuse(model.blocks[0])


def test_engine_with_and_without_fused_blocks_agree(tiny_model, tiny_tokens):
    fused = measure_heads(tiny_model, tiny_tokens, "resample")
    plain = measure_heads(tiny_model, tiny_tokens, "resample", fused=False)
    for name in HEAD_VARIABLES:
        assert float(np.abs(fused[name] - plain[name]).max()) < 1e-5, name


def test_cached_weights_follow_in_place_changes():
    """Inside cached_weights() the merged Q/K/V weights are built once, and rebuilt when a
    weight changes in place (as tests and users do between calls)."""
    model = random_model("llama")
    resid = block_inputs(model)
    block = model.blocks[0]
    with torch.no_grad(), cached_weights():
        before = run_block(block, resid)
        block.attn.W_Q[0, :, 0] += 1.0
        after = run_block(block, resid)
        assert float((after - before).abs().max()) > 1e-3
        assert float((after - block(resid)).abs().max()) < TOL
