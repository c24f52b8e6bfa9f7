"""A model job's passes reuse the memory the last pass freed (stages.job.keep_freed_memory)
instead of faulting in fresh pages from the kernel for every large activation: the same
numbers, less kernel time. Checked in fresh interpreters, as each job runs in its own."""

from __future__ import annotations

import platform
import subprocess
import sys
import textwrap

import pytest
from helpers import ROOT

from selfrepair.data import training
from selfrepair.stages import data as data_stage
from selfrepair.stages import job as job_module
from selfrepair.stages.job import ModelJob

# 8 allocations of 64 MiB each (a demo MLP activation is 32 MiB), each written and freed, after
# a first one: the minor page faults they cost (16,384 pages of 4 KiB each time glibc maps one
# afresh; with the memory kept, at most one more growth of the heap).
FAULTS = """
import resource, sys, torch
from selfrepair.stages.job import keep_freed_memory
applied = keep_freed_memory() if sys.argv[1] == "keep" else None
torch.ones(64 << 18)
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(8):
    torch.ones(64 << 18)
print(applied, resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def _faults(mode: str) -> tuple[str, int]:
    out = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(FAULTS), mode],
        capture_output=True,
        text=True,
        check=True,
        cwd=ROOT,
    ).stdout.split()
    return out[0], int(out[1])


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="mallopt is glibc's")
def test_freed_memory_is_reused_instead_of_faulted_in_again():
    applied, kept = _faults("keep")
    _, default = _faults("default")
    assert applied == "True"
    assert default > 8 * 16384 // 2  # glibc's default maps each allocation afresh
    assert kept <= default // 4  # at most one of the eight faulted in


def test_every_model_job_keeps_freed_memory(monkeypatch, tmp_path):
    """ModelJob.model, which every model rule's stage calls, sets it before loading the model."""
    calls = []
    monkeypatch.setattr(job_module, "keep_freed_memory", lambda: calls.append("kept") or True)
    monkeypatch.setattr(job_module, "standin_for", lambda job, seq_len: calls.append("model"))
    ModelJob(tokens=str(tmp_path), entry={"name": "m"}, batch_size=1, weights="w").model()
    assert calls == ["kept", "model"]


@pytest.mark.slow
def test_training_keeps_freed_memory(monkeypatch, tmp_path):
    """The train_model stage sets it before its first step too."""
    calls = []
    real = training.train_causal_lm

    def spy(*args, **kw):
        calls.append("train")
        return real(*args, **kw)

    monkeypatch.setattr(job_module, "keep_freed_memory", lambda: calls.append("kept") or True)
    monkeypatch.setattr(training, "train_causal_lm", spy)
    corpus = {"source": "python_stdlib", "split": "measure"}
    data_stage.train_tokenizer(corpus, 300, tmp_path / "tok")
    kw = dict(arch="gpt2", n_layers=1, d_model=16, n_heads=2, n_ctx=33, steps=2, batch_size=2)
    data_stage.train_model(
        tmp_path / "tok", tmp_path / "model", **kw, lr=1e-3, seed=0, corpus=corpus, progress=False
    )
    assert calls == ["kept", "train"]
