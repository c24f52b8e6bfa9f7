"""Residual norms and LayerNorm scales of ablated runs against full forward passes, and the
per-head ratios and shares built on the engine's store."""

from __future__ import annotations

import numpy as np
import pytest

from selfrepair.engine.self_repair import measure_heads
from selfrepair.mechanisms.norms import norm_ratios, residual_norms
from selfrepair.reference.mechanisms import reference_norms
from selfrepair.variables import ABLATIONS

HEADS = [(1, 2), (2, 3), (0, 0)]


@pytest.mark.parametrize("ablation", ABLATIONS)
def test_norms_and_scales_match_full_forward_reference(tiny_model, tiny_tokens, ablation):
    got = residual_norms(tiny_model, tiny_tokens, ablation, HEADS, batch_size=4)
    for i, (layer, head) in enumerate(HEADS):
        ref = reference_norms(tiny_model, tiny_tokens, ablation, layer, head)
        for name, want in ref.items():
            value = got[name].values[i] if got[name].ndim == 3 else got[name].values
            assert np.abs(value / want - 1).max() < 1e-5, (layer, head, name)
        assert np.abs(ref["resid_norm_ablated"] / ref["resid_norm_clean"] - 1).max() > 1e-3


def test_norm_is_the_layernorm_scale_of_a_centred_stream(tiny_model, tiny_tokens):
    """Processed weights keep the residual stream centred (LayerNorm) and RMSNorm does not
    centre, so |x|^2 = d_model (s^2 - eps): two separately computed quantities agree."""
    ds = residual_norms(tiny_model, tiny_tokens, "mean", HEADS)
    eps, d_model = tiny_model.ln_final.eps, tiny_model.cfg.d_model
    for run in ("clean", "ablated"):
        s = ds[f"ln_scale_{run}"].astype(np.float64)
        from_scale = np.sqrt(d_model * (s**2 - eps))
        assert float(np.abs(from_scale / ds[f"resid_norm_{run}"] - 1).max()) < 1e-5


@pytest.mark.parametrize("ablation", ABLATIONS)
def test_ratios_and_shares(tiny_model, tiny_tokens, ablation):
    engine = measure_heads(tiny_model, tiny_tokens, ablation, heads=HEADS)
    norms = residual_norms(tiny_model, tiny_tokens, ablation, HEADS)
    out = norm_ratios(engine, norms, HEADS, top_fraction=0.1)
    k = int(np.ceil(0.1 * tiny_tokens.shape[0] * (tiny_tokens.shape[1] - 1)))
    for i, (layer, head) in enumerate(HEADS):
        eng = engine.sel(layer=layer, head=head)
        want = (eng.ln_scale_clean / eng.ln_scale_ablated).values
        np.testing.assert_allclose(out.ln_scale_ratio.values[i], want, rtol=1e-6)
        np.testing.assert_allclose(out.logit_diff.values[i], eng.logit_diff.values)
        ratio = norms.resid_norm_ablated.values[i] / norms.resid_norm_clean.values
        np.testing.assert_allclose(out.resid_norm_ratio.values[i], ratio, rtol=1e-6)
        de = eng.de_clean.values.ravel()
        top = np.zeros(de.size, bool)
        top[np.argsort(-de, kind="stable")[:k]] = True
        assert np.array_equal(out.top.values[i].ravel(), top)
        for name, r in (("ln_scale_ratio", want), ("resid_norm_ratio", ratio)):
            shares = out[f"share_{name}_above_1"].isel(head=i)
            assert shares.sel(subset="all").item() == pytest.approx(np.mean(r > 1))
            assert shares.sel(subset="top").item() == pytest.approx(np.mean(r.ravel()[top] > 1))


def test_norms_from_other_tokens_are_refused(tiny_model, tiny_tokens):
    engine = measure_heads(tiny_model, tiny_tokens, "zero", heads=HEADS)
    other = residual_norms(tiny_model, tiny_tokens.flip(0), "zero", HEADS)
    with pytest.raises(ArithmeticError, match="differs from the ablation store"):
        norm_ratios(engine, other, HEADS)
    wrong_ablation = residual_norms(tiny_model, tiny_tokens, "mean", HEADS)
    with pytest.raises(ArithmeticError, match="differs from the ablation store"):
        norm_ratios(engine, wrong_ablation, HEADS)


def test_head_missing_from_the_engine_store_is_named(tiny_model, tiny_tokens):
    engine = measure_heads(tiny_model, tiny_tokens, "zero", heads=[(1, 2)])
    norms = residual_norms(tiny_model, tiny_tokens, "zero", [(1, 2), (2, 3)])
    with pytest.raises(ValueError, match="L2H3 was not measured"):
        norm_ratios(engine, norms, [(1, 2), (2, 3)])
