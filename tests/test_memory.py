"""The engine's memory: what it keeps beside the model's weights (issue 38).

The readout (models.readout) is the engine's largest tensor after the weights when it holds a
float32 [d_model, d_vocab] copy of W_U (154 MiB at GPT-2's vocabulary): it keeps none, and the
directions it builds are the full matrix's columns, bit for bit.
"""

from __future__ import annotations

import pytest
import torch

from selfrepair.models.builders import random_model
from selfrepair.models.readout import effective_unembedding, readout


def own_bytes(obj, model) -> int:
    """Bytes of the tensors held by obj's fields that are not the model's own parameters."""
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    return sum(
        v.numel() * v.element_size()
        for v in vars(obj).values()
        if isinstance(v, torch.Tensor) and v.untyped_storage().data_ptr() not in params
    )


@pytest.mark.parametrize("process", [True, False], ids=["processed", "unprocessed"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_readout_holds_no_copy_of_the_unembedding(family, process, dtype):
    model = random_model(family, process=process, d_vocab=4096).to(dtype, print_details=False)
    ro = readout(model)
    full = model.cfg.d_model * model.cfg.d_vocab * 4
    # Vectors only: the norm weight, the means and the bias (2 d_model + 2 d_vocab floats).
    assert own_bytes(ro, model) <= 4 * (2 * model.cfg.d_model + 2 * model.cfg.d_vocab) < full


@pytest.mark.parametrize("process", [True, False], ids=["processed", "unprocessed"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_readout_directions_are_the_full_matrix_columns(family, process, dtype):
    """Bit for bit (and with the same strides) the columns of the full effective unembedding,
    with and without a counterfactual token, so no number of the engine changes."""
    model = random_model(family, process=process).to(dtype, print_details=False)
    ro, w_u = readout(model), effective_unembedding(model)
    gen = torch.Generator().manual_seed(0)
    targets, counter = torch.randint(0, model.cfg.d_vocab, (2, 3, 7), generator=gen)
    u, _ = ro.directions(targets)
    expected = w_u.T[targets]
    assert torch.equal(u, expected) and u.stride() == expected.stride()
    u, _ = ro.directions(targets, counter)
    assert torch.equal(u, w_u.T[targets] - w_u.T[counter])


def test_effective_unembedding_is_centred(family):
    """Its columns sum to 0 over the vocabulary (and over d_model after a LayerNorm)."""
    model = random_model(family, process=False)
    w_u = effective_unembedding(model).double()
    assert w_u.sum(1).abs().max() < 1e-3
    if readout(model).centre:
        assert w_u.sum(0).abs().max() < 1e-3
