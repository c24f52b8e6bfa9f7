"""The training figure's rule (workflow/rules/training.smk), self-repair over training: it opens
each checkpoint's clean and ablation shards (the same first `checkpoint_shards` shards of every
checkpoint, the final model's included), summarizes the heads (analysis.reduce.head_summary),
reduces to per-layer curves (analysis.training) and draws them (plots.training).

Runs in the analysis environment: no torch here."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any

import xarray as xr
from matplotlib.figure import Figure

from selfrepair.analysis.reduce import head_summary
from selfrepair.analysis.training import mean_loss, training_curves
from selfrepair.plots.common import saved
from selfrepair.plots.training import training_self_repair as draw
from selfrepair.stages.joblog import SAME_WEIGHTS_KEYS
from selfrepair.stages.store import check_same_run, open_token_shards
from selfrepair.variables import HEAD_VARIABLES

__all__ = ["model_curves", "training_self_repair"]

Paths = Sequence[str | os.PathLike]


def model_curves(
    checkpoints: Sequence[Mapping[str, Any]],
    *,
    top_fraction: float,
    de_epsilon: float,
    n_tokens: int,
) -> xr.Dataset:
    """One model's training curves (analysis.training.training_curves) from its checkpoints'
    stores.

    Args:
        checkpoints: the model's checkpoints, the model itself (final) last: each {key, step,
            clean: its clean shards, ablation: its ablation shards}.
        top_fraction: share of each head's tokens, by clean direct effect, called top tokens.
        de_epsilon: tokens with a clean DE at most this are left out of the LayerNorm share.
        n_tokens: the tokens measured per checkpoint, checked against the stores.
    """
    summaries, losses = {}, {}
    for ckpt in checkpoints:
        step = int(ckpt["step"])
        ablated = open_token_shards(ckpt["ablation"], ckpt["key"], n_tokens, HEAD_VARIABLES)
        summaries[step] = head_summary(ablated, top_fraction=top_fraction, de_epsilon=de_epsilon)
        clean = open_token_shards(ckpt["clean"], ckpt["key"], n_tokens, ("loss",))
        paths = [ckpt["ablation"][0], ckpt["clean"][0]]
        check_same_run(paths, [ablated, clean], SAME_WEIGHTS_KEYS)
        losses[step] = mean_loss(clean["loss"])
    return training_curves(summaries, losses)


def training_self_repair(
    *,
    checkpoints: Mapping[str, Sequence[Mapping[str, Any]]],
    top_fraction: float,
    de_epsilon: float,
    n_tokens: int,
    out: Paths = (),
) -> Figure:
    """Rule training_self_repair: per model with training checkpoints, per-layer self-repair on
    each head's top tokens and its parts, the clipped LayerNorm share and the loss against the
    training step (plots.training).

    Args:
        checkpoints: per model, its checkpoints in step order (model_curves).
        top_fraction: share of each head's tokens, by clean direct effect, called top tokens.
        de_epsilon: tokens with a clean DE at most this are left out of the LayerNorm share.
        n_tokens: the tokens measured per checkpoint.
        out: the files to write (the PDF, then the PNG); none: nothing is saved.
    """
    curves = {
        model: model_curves(
            ckpts, top_fraction=top_fraction, de_epsilon=de_epsilon, n_tokens=n_tokens
        )
        for model, ckpts in checkpoints.items()
    }
    return saved(draw(curves, top_fraction), out)
