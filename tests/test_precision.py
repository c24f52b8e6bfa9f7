"""Reduced precision: bfloat16 is allowed on CUDA only, with its error measured here against
float32 (on the CPU, whose bfloat16 arithmetic rounds like the GPU's)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from selfrepair.engine.self_repair import measure_heads
from selfrepair.models.builders import random_model
from selfrepair.models.loading import resolve_dtype

# Per token, bfloat16 values stay within 8% of the variable's range; per-head means over
# tokens (what the figures show) within 1%. Measured over 4 token seeds x 3 families: per token
# up to 5.2% with TransformerLens' eager attention and 6.5% (Pythia sr_ln, whose range is the
# smallest) with the fused blocks' scaled_dot_product_attention; the two are the same rounding
# noise (means of the per-seed maxima agree within 0.5 points), not a bias.
TOKEN_TOL, MEAN_TOL = 0.08, 0.01


def test_bfloat16_error_against_float32(family, tiny_tokens):
    reference = measure_heads(random_model(family), tiny_tokens, "resample")
    model = random_model(family)
    model.cfg.dtype = torch.bfloat16
    got = measure_heads(model.to(torch.bfloat16), tiny_tokens, "resample")
    for name in ("logit_diff", "de_clean", "self_repair", "sr_heads", "sr_mlps", "sr_ln"):
        span = float(np.abs(reference[name]).max())
        assert float(np.abs(got[name] - reference[name]).max()) < TOKEN_TOL * span, name
        means = got[name].mean(("batch", "pos")) - reference[name].mean(("batch", "pos"))
        assert float(np.abs(means).max()) < MEAN_TOL * span, name
    # ... and it is really computed in bfloat16, not silently in float32.
    assert float(np.abs(got.logit_diff - reference.logit_diff).max()) > 1e-4


def test_reduced_precision_is_refused_on_cpu():
    with pytest.raises(
        ValueError, match="^config key dtype: bfloat16 runs only on CUDA .*set dtype: float32$"
    ):
        resolve_dtype("bfloat16", "cpu")
    assert resolve_dtype("float32", "cpu") is torch.float32
