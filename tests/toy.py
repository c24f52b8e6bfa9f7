"""Toy workflow configs shared by the tests that run the workflow (resume, SLURM)."""

from __future__ import annotations


def toy_model(name: str, arch: str) -> dict:
    """A demo model entry at toy size: 4 layers x 4 heads (the demo's figure and mechanism
    substitutes stay valid), d_model 32, 20 training steps."""
    train = {"arch": arch, "tokenizer": "stdlib-bpe", "n_layers": 4, "d_model": 32, "n_heads": 4}
    return {"name": name, "train": {**train, "steps": 20, "batch_size": 4}}
