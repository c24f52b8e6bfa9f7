"""The engine's memory: what it keeps beside the model's weights (issue 38).

The readout (models.readout) is the engine's largest tensor after the weights when it holds a
float32 [d_model, d_vocab] copy of W_U (154 MiB at GPT-2's vocabulary): it keeps none, and the
directions it builds are the full matrix's columns, bit for bit. Nor does it make one while it is
built: on a CPU a freed 154 MiB copy stayed in the process's heap, the engine's largest transient.

The engine's peak live tensor bytes (selfrepair.live_tensors: deterministic, unlike the resident
set) stay within a bound computed from the shapes, tight enough that one more
[heads, batch, pos, d_model] tensor alive at the peak would break it.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from selfrepair.engine.attribution import RepairSums
from selfrepair.engine.self_repair import measure_heads
from selfrepair.live_tensors import LiveTensors, tensor_bytes
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


def test_unembedding_means_buffer_no_larger_than_the_matrix():
    """A vocabulary below MEAN_COLUMNS columns: the one buffer holds W_U once, not pieces of
    rows W_U does not have (a [MEAN_COLUMNS d_model / d_vocab, d_vocab] buffer before)."""
    w_u = torch.randn(48, 500, generator=torch.Generator().manual_seed(0))
    with LargestNewTensor() as largest:
        unembedding_means(w_u, None, True, MEAN_COLUMNS)
    assert largest.bytes <= w_u.numel() * 4


def test_live_tensors_counts_storages_alive_at_once():
    """Bytes of storages made inside, at most alive together: views and in-place results add
    nothing, a storage counts until its last view is freed, and tensors made before (weights)
    are not counted."""
    weight = torch.ones(1000)
    with LiveTensors() as live:
        a = torch.empty(100)  # 400 bytes
        view = a[10:].view(9, 10)
        view.add_(1)
        b = weight * 2  # 4000
        del a  # the view keeps its storage: 4400 alive
        c = torch.zeros(50, dtype=torch.float64)  # 400: 4800, the peak
        del view, b
        d = c.exp()  # 400 + 400
    assert (live.peak, live.bytes) == (4800, 800)
    assert [x.nbytes for x in live.at_peak] == [4000, 400, 400]
    assert live.at_peak[0].shape == (1000,) and live.at_peak[0].op == "aten.mul.Tensor"
    assert tensor_bytes([weight, weight[1:]]) == 4000
    del c, d


def engine_bound(cfg, rows: int, n_pos: int, group: int, attribution: bool) -> int:
    """Bytes the engine (float32, GPT-2's sequential blocks) may hold at its peak beyond the
    weights, with L layers, d_model D, d_mlp M, H heads of d_head, B rows, P positions and
    G heads per ablated pass:
        (2L + 1) B P D          the clean pass's z and restart residual of every layer, and u
      + 3 L D (D + 1)           the merged Q/K/V weights and biases (models.blocks, cached)
      + G B P (2M + 3D)         an ablated block at its MLP: pre and post activations, its
                                input, resid_mid and ln2's output, for G stacked heads
      + B P (G (3 d_head + 32) + 2L + 16)  per token: the ablated and clean z of the group,
                                W_O . u, the group's results, the clean pass's dots
    and with who repairs whom (engine.attribution) every later layer's W_O . u of all heads,
    (L - 1) B P D, and two [G, B, P, components] (components: L H + L + 1)."""
    L, D, M, dh = cfg.n_layers, cfg.d_model, cfg.d_mlp, cfg.d_head
    B, P, G = rows, n_pos, group
    floats = (2 * L + 1) * B * P * D + 3 * L * D * (D + 1) + G * B * P * (2 * M + 3 * D)
    floats += B * P * (G * (3 * dh + 32) + 2 * L + 16)
    if attribution:
        floats += (L - 1) * B * P * D + 2 * G * B * P * (L * cfg.n_heads + L + 1)
    return 4 * floats


@pytest.mark.parametrize("group, attribution", [(1, False), (2, False), (4, False), (2, True)])
def test_engine_peak_live_tensors_within_bound_of_shapes(group, attribution):
    """measure_heads' peak live tensor bytes beyond the weights, every head, on a small GPT-2:
    within engine_bound, which is tight enough that one more [heads, batch, pos, d_model]
    tensor alive at the peak (e.g. a copy of every head's output, or the change W_O (z' - z)
    held through the ablated pass) exceeds it; and the same on every run."""
    model = random_model("gpt2", n_layers=3, d_model=64, n_heads=4, d_vocab=512, n_ctx=64)
    cfg, rows, n_pos = model.cfg, 4, 24
    tokens = torch.randint(1, cfg.d_vocab, (rows, n_pos + 1), generator=torch.Generator())
    tokens[:, 0] = 0
    peaks = []
    for _ in range(2):
        top = np.zeros((cfg.n_layers, cfg.n_heads, rows, n_pos), bool)
        sums = RepairSums(model, top) if attribution else None
        with LiveTensors(depth=0) as live:
            measure_heads(model, tokens, heads_per_pass=group, sums=sums)
        peaks.append(live.peak)
    bound = engine_bound(cfg, rows, n_pos, group, attribution)
    copy = cfg.n_heads * rows * n_pos * cfg.d_model * 4
    assert peaks[0] == peaks[1]
    print(f"peak {peaks[0]}, bound {bound}, one copy {copy}")
    assert peaks[0] <= bound < peaks[0] + copy, (peaks[0], bound, copy)
    assert tensor_bytes(model.parameters()) > 0  # the weights, not counted in the peak
