"""The benchmark's full-forward method against the slow reference (the test oracle)."""

from __future__ import annotations

import numpy as np
import pytest

from selfrepair.engine.self_repair import measure_heads
from selfrepair.reference.full_forward import full_forward_measure_heads
from selfrepair.reference.heads import reference_measure_heads
from selfrepair.variables import ABLATIONS, HEAD_VARIABLES


@pytest.mark.parametrize("ablation", ABLATIONS)
def test_full_forward_matches_reference(tiny_model, tiny_tokens, ablation):
    got = full_forward_measure_heads(tiny_model, tiny_tokens, ablation)
    ref = reference_measure_heads(tiny_model, tiny_tokens, ablation)
    for name in (*HEAD_VARIABLES, "logit_clean", "ln_scale_clean"):
        assert got[name].dtype == np.float32
        assert float(np.abs(got[name] - ref[name]).max()) < 1e-4, name
    assert float(np.abs(ref.sr_heads).max()) > 0.05 and float(np.abs(ref.sr_mlps).max()) > 0.05


def test_subset_of_heads_and_mean_without_bos(tiny_model, tiny_tokens):
    heads = [(2, 1), (0, 3)]
    got = full_forward_measure_heads(tiny_model, tiny_tokens, "mean", heads, mean_include_bos=False)
    ref = reference_measure_heads(tiny_model, tiny_tokens, "mean", heads, mean_include_bos=False)
    for name in HEAD_VARIABLES:
        assert np.array_equal(np.isnan(got[name]), np.isnan(ref[name])), name
        assert float(np.nanmax(np.abs(got[name] - ref[name]))) < 1e-4, name
    assert int(np.isfinite(got.self_repair).any(("batch", "pos")).sum()) == len(heads)


def test_engine_agrees_with_full_forward(tiny_model, tiny_tokens):
    """What the benchmark checks at scale, on the tiny models."""
    got = measure_heads(tiny_model, tiny_tokens, "resample")
    ref = full_forward_measure_heads(tiny_model, tiny_tokens, "resample")
    for name in HEAD_VARIABLES:
        assert float(np.abs(got[name] - ref[name]).max()) < 1e-4, name
