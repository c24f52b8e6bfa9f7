"""Clean direct effects against a full cached forward pass, and their sum."""

from __future__ import annotations

import numpy as np

from selfrepair.engine.clean import clean_direct_effects, decomposition_error, total_direct_effect
from selfrepair.engine.self_repair import measure_heads
from selfrepair.reference.heads import reference_clean_direct_effects


def test_components_match_reference(tiny_model, tiny_tokens):
    ds = clean_direct_effects(tiny_model, tiny_tokens, batch_size=4)
    ref = reference_clean_direct_effects(tiny_model, tiny_tokens)
    for name, value in ref.items():
        assert float(np.abs(ds[name].values - value).max()) < 1e-4, name


def test_components_sum_to_centred_logit_on_every_token(tiny_model, tiny_tokens):
    ds = clean_direct_effects(tiny_model, tiny_tokens, batch_size=5)
    assert decomposition_error(ds) < 1e-4
    # The sum is not trivially the logit: dropping one layer's MLP breaks it.
    broken = total_direct_effect(ds) - ds.de_mlp.isel(layer=0)
    assert float(np.abs(broken - ds.logit_clean).max()) > 1e-3


def test_clean_quantities_agree_with_engine(tiny_model, tiny_tokens):
    ds = clean_direct_effects(tiny_model, tiny_tokens)
    eng = measure_heads(tiny_model, tiny_tokens, "zero")
    assert float(np.abs(ds.de_head - eng.de_clean).max()) < 1e-5
    assert float(np.abs(ds.logit_clean - eng.logit_clean).max()) < 1e-5
    assert float(np.abs(ds.ln_scale_clean - eng.ln_scale_clean).max()) < 1e-6


def test_loss_is_the_model_cross_entropy(tiny_model, tiny_tokens):
    import torch

    ds = clean_direct_effects(tiny_model, tiny_tokens)
    with torch.no_grad():
        loss = tiny_model(tiny_tokens, return_type="loss", loss_per_token=True)
    assert float(np.abs(ds.loss.values - loss.cpu().numpy()).max()) < 1e-4
