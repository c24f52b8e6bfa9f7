"""FLOP counts from shapes: by hand on a tiny config, against torch's own counter on the real
forward pass and engine, and against PAPER.md's numbers for gpt2-small shapes."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from selfrepair.engine.atp import measure_atp
from selfrepair.engine.self_repair import measure_heads
from selfrepair.flops import (
    Shapes,
    all_heads,
    atp_flops,
    attention_flops,
    backward_flops,
    block_flops,
    engine_flops,
    forward_flops,
    graddrop_flops,
    head_unit_flops,
    mlp_flops,
    reference_flops,
    unembed_flops,
)
from selfrepair.models.builders import random_model

TINY = Shapes(n_layers=2, d_model=4, n_heads=2, d_head=2, d_mlp=8, d_vocab=10)
GPT2_SMALL = Shapes(n_layers=12, d_model=768, n_heads=12, d_head=64, d_mlp=3072, d_vocab=50257)


def test_tiny_counts_by_hand():
    n = 3  # positions; causal attention multiplies 3 + 2 + 1 = 6 query-key pairs
    # Q, K, V: 2 n d_model (3 heads d_head) = 2*3*4*12; scores and pattern.v: 2 heads x 6 pairs
    # x 2 d_head each; W_O: 2*3*4*4.
    assert attention_flops(TINY, n) == 288 + 2 * 2 * 6 * 2 * 2 + 96 == 480
    assert attention_flops(TINY, n, causal=False) == 288 + 2 * 2 * 9 * 2 * 2 + 96
    assert mlp_flops(TINY, n) == 2 * (2 * 3 * 4 * 8) == 384
    assert block_flops(TINY, n) == 864
    assert unembed_flops(TINY, n) == 2 * 3 * 4 * 10 == 240
    assert forward_flops(TINY, n) == 2 * 864 + 240 == 1968
    assert reference_flops(TINY, n, n_ablated=4) == 5 * 1968
    # Engine: clean pass 1728 plus 5 projections (2 layers x attn, MLP, and the final residual)
    # of 2 d_model each per position = 120. Layer 0 heads: MLP of layer 0 and block 1 (384 + 864)
    # plus per position 2*2*4 (delta) + 2*2*4 (W_O.u) + 2*2*2 (z.v clean and ablated) + 4
    # projections x 2*4 = 72; layer 1 heads: MLP of layer 1 (384) plus 16 + 16 + 8 + 2 x 8 = 56.
    layer0 = 2 * (384 + 864 + 3 * 72)
    layer1 = 2 * (384 + 3 * 56)
    assert engine_flops(TINY, n, all_heads(TINY)) == 1728 + 120 + layer0 + layer1 == 5880


def test_gated_grouped_and_parallel_variants():
    n = 3
    llama = Shapes(**{**TINY.__dict__, "n_kv_heads": 1, "gated_mlp": True})
    assert attention_flops(llama, n) == 2 * 3 * 4 * (2 + 2) * 2 + 96 + 96  # K and V: one head
    assert mlp_flops(llama, n) == 3 * (2 * 3 * 4 * 8)
    pythia = Shapes(**{**TINY.__dict__, "parallel_attn_mlp": True})
    assert not pythia.sequential and TINY.sequential
    # A parallel block's own MLP is not rerun: last-layer heads cost only their contractions.
    only_last = engine_flops(pythia, n, {1: 2}) - engine_flops(pythia, n, {})
    assert only_last == 2 * 3 * (16 + 16 + 8 + 1 * 8)


@pytest.mark.parametrize("family", ["gpt2", "pythia", "llama"])
def test_counts_equal_torch_flop_counter(family):
    """torch counts every matmul it runs; TransformerLens' eager attention multiplies the full
    square, hence causal=False."""
    model = random_model(family)
    shapes = Shapes.of(model.cfg)
    tokens = torch.randint(
        1, model.cfg.d_vocab, (2, 11), generator=torch.Generator().manual_seed(0)
    )
    tokens[:, 0] = 0
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(tokens[:, :-1])
    assert counter.get_total_flops() == 2 * forward_flops(shapes, 10, causal=False)
    with FlopCounterMode(display=False) as counter:
        measure_heads(model, tokens, "resample", fused=False)
    assert counter.get_total_flops() == 2 * engine_flops(shapes, 10, all_heads(shapes), False)


@pytest.mark.parametrize("family", ["gpt2", "pythia", "llama"])
def test_atp_counts_equal_torch_flop_counter(family):
    """AtP: a forward pass with its graph and one backward pass (activation gradients only);
    GradDrop: L - 1 more, each skipping its dropped block (autograd runs nothing behind a
    dropped gradient); per token: the same again per group of one token per row; each head
    over its own tokens: one pass down to its layer (GradDrop: one more per layer above)."""
    model = random_model(family)
    shapes = Shapes.of(model.cfg)
    tokens = torch.randint(
        1, model.cfg.d_vocab, (2, 11), generator=torch.Generator().manual_seed(0)
    )
    tokens[:, 0] = 0
    top = np.zeros((model.cfg.n_layers, model.cfg.n_heads, 2, 10), bool)
    top[..., [2, 5, 7]] = True  # three groups
    runs = {
        "atp": {"graddrop": False},
        "gd": {},
        "tokens": {"per_token": top},
        "heads": {"top": top, "graddrop": False},
        "heads_gd": {"top": top},
    }
    counts = {}
    for name, kw in runs.items():
        with FlopCounterMode(display=False) as counter:
            measure_atp(model, tokens, "zero", fused=False, **kw)
        counts[name] = counter.get_total_flops()
    assert counts["atp"] == 2 * atp_flops(shapes, 10, causal=False)
    drop = graddrop_flops(shapes, 10, causal=False)
    assert counts["gd"] - counts["atp"] == 2 * drop
    group = backward_flops(shapes, 10, causal=False) + drop
    assert counts["tokens"] - counts["gd"] == 3 * 2 * group
    # every head has its own tokens in both rows: one pass per head, one more per layer above
    assert counts["heads"] - counts["atp"] == 2 * head_unit_flops(shapes, 10, causal=False)
    units = head_unit_flops(shapes, 10, graddrop=True, causal=False)
    assert counts["heads_gd"] - counts["gd"] - (counts["heads"] - counts["atp"]) == 2 * units


def test_paper_numbers_for_gpt2_small():
    """PAPER.md (1024 positions): forward 0.27 GFLOP/token with 77 MFLOP of unembedding; the
    engine 13.8 GFLOP/token; all heads by full passes 41 GFLOP/token, which matches counting the
    full attention square (with causal attention it is 38.6)."""
    n = 1024
    assert abs(unembed_flops(GPT2_SMALL, n) / n / 1e6 - 77) < 0.5
    assert abs(forward_flops(GPT2_SMALL, n) / n / 1e9 - 0.27) < 0.01
    assert abs(engine_flops(GPT2_SMALL, n, all_heads(GPT2_SMALL)) / n / 1e9 - 13.8) < 0.3
    full_square = reference_flops(GPT2_SMALL, n, 144, causal=False) / n / 1e9
    assert abs(full_square - 41) < 0.5
