"""Tiny random models of the paper's three architecture families, shared by the tests."""

from __future__ import annotations

import warnings

import pytest
import torch

from selfrepair.models import FAMILIES, random_model

warnings.filterwarnings("ignore", category=DeprecationWarning)


@pytest.fixture(scope="session", params=FAMILIES)
def family(request) -> str:
    return request.param


@pytest.fixture(scope="session")
def tiny_model(family):
    """A processed (fold_ln, centred) random model of each family, as the paper loads models."""
    return random_model(family)


@pytest.fixture(scope="session")
def tiny_tokens(tiny_model) -> torch.Tensor:
    gen = torch.Generator().manual_seed(1)
    tokens = torch.randint(1, tiny_model.cfg.d_vocab, (6, 14), generator=gen)
    tokens[:, 0] = 0  # BOS
    return tokens
