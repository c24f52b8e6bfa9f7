"""The engine's memory: what it keeps beside the model's weights (issue 38).

The readout (models.readout) is the engine's largest tensor after the weights when it holds a
float32 [d_model, d_vocab] copy of W_U (154 MiB at GPT-2's vocabulary): it keeps none, and the
directions it builds are the full matrix's columns, bit for bit. Nor does it make one while it is
built: on a CPU a freed 154 MiB copy stayed in the process's heap, the engine's largest transient.
"""

from __future__ import annotations

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from selfrepair.models.builders import random_model
from selfrepair.models.readout import (
    MEAN_COLUMNS,
    effective_unembedding,
    readout,
    unembedding_means,
)


class LargestNewTensor(TorchDispatchMode):
    """The bytes of the largest tensor an operation inside made (not a view of its inputs)."""

    def __init__(self):
        super().__init__()
        self.bytes = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        inputs = tree_flatten((args, kwargs))[0]
        seen = {t.untyped_storage().data_ptr() for t in inputs if isinstance(t, torch.Tensor)}
        for t in tree_flatten(out)[0]:
            if isinstance(t, torch.Tensor) and t.untyped_storage().data_ptr() not in seen:
                self.bytes = max(self.bytes, t.untyped_storage().nbytes())
        return out


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


@pytest.mark.parametrize("process", [True, False], ids=["processed", "unprocessed"])
def test_readout_builds_no_copy_of_the_unembedding(family, process):
    """Building the readout makes no tensor beyond one piece of MEAN_COLUMNS columns (GPT-2's
    vocabulary, so W_U has several pieces), and its directions are still the full matrix's."""
    model = random_model(family, process=process, d_vocab=50257)
    with LargestNewTensor() as largest:
        ro = readout(model)
    piece = model.cfg.d_model * MEAN_COLUMNS * 4
    assert largest.bytes <= piece < model.cfg.d_model * model.cfg.d_vocab * 4
    u, _ = ro.directions(torch.arange(model.cfg.d_vocab))
    assert torch.equal(u, effective_unembedding(model).T)


@pytest.mark.parametrize("size", [32, 96, MEAN_COLUMNS])
@pytest.mark.parametrize("weighted", [False, True], ids=["folded", "norm weight"])
def test_unembedding_means_in_pieces_are_the_whole_matrix_bits(size, weighted):
    """Pieces of a multiple of 32 columns (torch's vectorised column reduction) and any rows."""
    gen = torch.Generator().manual_seed(0)
    w_u = torch.randn(48, 5003, generator=gen)
    weight = 1 + torch.rand(48, generator=gen) if weighted else None
    full = w_u if weight is None else weight[:, None] * w_u
    mean_vocab = full.mean(1, keepdim=True)
    mean_model = (full - mean_vocab).mean(0)
    got_vocab, got_model = unembedding_means(w_u, weight, True, size)
    assert torch.equal(got_vocab, mean_vocab[:, 0]) and torch.equal(got_model, mean_model)
    assert unembedding_means(w_u, weight, False, size)[1] is None
