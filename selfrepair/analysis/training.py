"""Self-repair over training: the per-head summaries of a model's checkpoints (analysis.reduce's
head_summary, each on the same tokens) reduced to per-layer curves against the training step,
with each checkpoint's mean next-token loss on those tokens. Pure: no I/O, no torch."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import xarray as xr

from selfrepair.analysis.reduce import layer_mean

__all__ = ["CURVE_PARTS", "checkpoint_layers", "mean_loss", "training_curves"]

# Paper Eq. 2: self-repair and its parts (other heads, MLP layers, the final LayerNorm).
CURVE_PARTS = ("self_repair", "sr_heads", "sr_mlps", "sr_ln")


def checkpoint_layers(summary: xr.Dataset) -> xr.Dataset:
    """Per layer (dim layer), the mean over its heads of each head's mean on its top tokens:
    self_repair, sr_heads, sr_mlps, sr_ln, and the LayerNorm share clipped to [0, 1]
    (ln_share_clipped; tokens with clean DE at most de_epsilon left out, as in Fig 6).

    Args:
        summary: one checkpoint's per-head summary (reduce.head_summary).
    """
    out = {part: layer_mean(summary[f"top_{part}"]) for part in CURVE_PARTS}
    out["ln_share_clipped"] = layer_mean(summary["top_ln_share_clipped"])
    return xr.Dataset(out)


def mean_loss(loss: xr.DataArray) -> float:
    """Mean next-token cross-entropy (nats) over every token of a clean store's `loss`, summed
    in float64 (a float32 sum over 10^5 tokens drifts in the 5th digit)."""
    values = np.asarray(loss.values, dtype=np.float64)
    if values.size == 0 or not np.isfinite(values).all():
        raise ValueError("the loss holds no tokens, or NaN/inf")
    return float(values.mean())


def training_curves(summaries: Mapping[int, xr.Dataset], losses: Mapping[int, float]) -> xr.Dataset:
    """One model's checkpoints side by side: dims (step, layer) for checkpoint_layers'
    variables and (step,) for `loss`, in step order.

    Args:
        summaries: per training step, that checkpoint's per-head summary.
        losses: per training step, its mean loss on the same tokens (mean_loss).
    """
    if set(summaries) != set(losses):
        raise ValueError(f"steps differ: summaries {sorted(summaries)}, losses {sorted(losses)}")
    steps = sorted(summaries)
    if not steps:
        raise ValueError("no checkpoints")
    layers = [checkpoint_layers(summaries[s]) for s in steps]
    if len({ds.sizes["layer"] for ds in layers}) != 1:
        raise ValueError("the checkpoints of one model differ in their number of layers")
    curves = xr.concat(layers, "step").assign_coords(step=steps)
    curves["loss"] = ("step", np.array([losses[s] for s in steps], dtype=np.float64))
    return curves
