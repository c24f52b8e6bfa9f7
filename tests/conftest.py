"""Tiny random models of the paper's three architecture families, shared by the tests."""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import pytest
import torch
from helpers import REDUCED_DEMO, REDUCED_DEMO_CONFIGS, ROOT, link_project, snakemake

from selfrepair.models.builders import FAMILIES, random_model

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


@pytest.fixture(scope="session")
def finished_run(tmp_path_factory) -> tuple[Path, tuple[str, ...]]:
    """(run directory, its config files in --configfile order) of a finished demo run, made
    once per session (the report and explorer tests share it).

    By default the reduced demo (config/demo.yaml, then its overlay .test/config/config.yaml)
    runs in a temporary directory; SELFREPAIR_DEMO_RUN names the directory of a finished run to
    use instead (SELFREPAIR_DEMO_CONFIG: its config files, space-separated, if not
    config/demo.yaml; the overlay alone means the reduced demo's two files)."""
    given = os.environ.get("SELFREPAIR_DEMO_RUN")
    if given:
        configs = tuple(os.environ.get("SELFREPAIR_DEMO_CONFIG", "config/demo.yaml").split())
        if configs == (str(REDUCED_DEMO.relative_to(ROOT)),):
            configs = REDUCED_DEMO_CONFIGS
        return Path(given), configs
    run = tmp_path_factory.mktemp("demo-run")
    link_project(run)
    proc = snakemake("--cores", "2", "--configfile", *REDUCED_DEMO_CONFIGS, cwd=run, timeout=3600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return run, REDUCED_DEMO_CONFIGS
