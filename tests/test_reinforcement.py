"""The self-reinforcement experiment against the paper's literal method (one full forward pass
per position and scale with a hook), its invariants, and the classification by hand."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import xarray as xr

from selfrepair.analysis.mechanisms import classify_reinforcement
from selfrepair.mechanisms.reinforcement import (
    reinforcement_heads,
    reinforcement_with_classes,
    second_half_heads,
    self_reinforcement,
)
from selfrepair.models.builders import random_model
from selfrepair.reference.mechanisms import reference_reinforcement

HEADS = [(1, 2), (2, 0), (0, 3)]  # middle, last and first layer
SCALES = [1.0, 3.0, 5.0]


def test_matches_one_full_forward_pass_per_position_and_scale(tiny_model, tiny_tokens):
    tokens = tiny_tokens[:5, :9]
    got = self_reinforcement(tiny_model, tokens, HEADS, SCALES, batch_size=2)
    for i, (layer, head) in enumerate(HEADS):
        ref = reference_reinforcement(tiny_model, tokens, layer, head, SCALES)
        for name, want in ref.items():
            assert float(np.abs(got[name].values[i] - want).max()) < 1e-5, (layer, head, name)
        # Adding the output must change the DE, or the comparison proves little.
        assert float(np.abs(ref["de_new"] - ref["de_clean"]).max()) > 1e-2


def test_scale_zero_changes_nothing(tiny_model, tiny_tokens):
    got = self_reinforcement(tiny_model, tiny_tokens[:, :8], HEADS, [0.0, 1.0])
    for name in ("de_new", "de_new_clean_scale"):
        zero = got[name].sel(scale=0.0)
        assert float(np.abs(zero - got.de_clean).max()) < 1e-6
        assert float(np.abs(got[name].sel(scale=1.0) - got.de_clean).max()) > 1e-3


def test_heads_default_to_the_second_half():
    model = random_model("gpt2", n_layers=5)
    assert second_half_heads(model) == [(layer, h) for layer in (2, 3, 4) for h in range(4)]
    assert reinforcement_heads(model, [(0, 1)], second_half=False) == [(0, 1)]
    both = reinforcement_heads(model, [(0, 1), (4, 0)])
    assert both[0] == (0, 1) and len(both) == 13
    with pytest.raises(ValueError, match="L5H0 is out of range"):
        reinforcement_heads(model, [(5, 0)])


def synthetic(factors: dict[str, list[float]], seed=0) -> xr.Dataset:
    """de_new = factor x de_clean (+ tiny noise) per head and scale."""
    rng = np.random.default_rng(seed)
    clean = rng.normal(size=(len(factors), 4, 6))
    new = np.stack([[f * clean[i] for f in fs] for i, fs in enumerate(factors.values())])
    new += 1e-3 * rng.normal(size=new.shape)
    return xr.Dataset(
        {
            "de_clean": (("head", "batch", "pos"), clean),
            "de_new": (("head", "scale", "batch", "pos"), new),
        },
        coords={"head": list(factors), "scale": [1.0, 3.0, 5.0]},
    )


def test_classification_by_sign_and_trend_of_the_change_slope():
    ds = synthetic(
        {
            "repress": [0.8, 0.5, 0.1],
            "reinforce": [1.1, 1.4, 2.0],
            "mixed": [0.9, 1.2, 1.5],
            "repress_not_falling": [0.5, 0.6, 0.9],
        }
    )
    out = classify_reinforcement(ds)
    np.testing.assert_allclose(out.slope.sel(head="reinforce").values, [1.1, 1.4, 2.0], atol=1e-2)
    np.testing.assert_allclose(out.change_slope, out.slope - 1, atol=1e-6)
    assert out.classification.values.tolist() == [
        "self-repressing",
        "self-reinforcing",
        "mixed",
        "self-repressing",  # negative at every scale, trend through the origin still negative
    ]
    want_trend = np.sum(np.array([-0.2, -0.5, -0.9]) * [1, 3, 5]) / np.sum(np.square([1, 3, 5]))
    assert out.trend.sel(head="repress").item() == pytest.approx(want_trend, abs=1e-2)
    mean_change = (ds.de_new - ds.de_clean).mean(("batch", "pos"))
    np.testing.assert_allclose(out.mean_change, mean_change, atol=1e-6)


def test_measurement_and_classes_merge(tiny_tokens):
    model = random_model("pythia")
    heads = reinforcement_heads(model, second_half=True)
    ds = reinforcement_with_classes(
        self_reinforcement(model, tiny_tokens[:3, :6], heads, [1.0, 2.0])
    )
    assert ds.sizes == {"head": 8, "scale": 2, "batch": 3, "pos": 5}
    assert set(ds.classification.values) <= {"self-repressing", "self-reinforcing", "mixed"}
    assert torch.is_tensor(torch.as_tensor(ds.slope.values))
