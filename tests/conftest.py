"""Tiny random models of the paper's three architecture families, shared by the tests."""

from __future__ import annotations

import os
import warnings

import pytest
import torch

from selfrepair.models.loading import FAMILIES, random_model

warnings.filterwarnings("ignore", category=DeprecationWarning)

# Where the shared tiny models live: SELFREPAIR_TEST_DEVICE=cuda runs the engine-vs-reference
# tests on a GPU (CI has none; the default is the CPU).
TEST_DEVICE = os.environ.get("SELFREPAIR_TEST_DEVICE", "cpu")


@pytest.fixture(scope="module")
def one_torch_thread():
    """Toy models run fastest on one thread, and do not stall on a busy machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session", params=FAMILIES)
def family(request) -> str:
    return request.param


@pytest.fixture(scope="session")
def tiny_model(family):
    """A processed (fold_ln, centred) random model of each family, as the paper loads models."""
    return random_model(family).to(TEST_DEVICE)


@pytest.fixture(scope="session")
def tiny_tokens(tiny_model) -> torch.Tensor:
    gen = torch.Generator().manual_seed(1)
    tokens = torch.randint(1, tiny_model.cfg.d_vocab, (6, 14), generator=gen)
    tokens[:, 0] = 0  # BOS
    return tokens
