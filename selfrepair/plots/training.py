"""Self-repair over training (beyond the paper): per model, per-layer curves against the training
step of self-repair and its parts, the clipped LayerNorm share, and the loss."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import xarray as xr
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from selfrepair.analysis.training import CURVE_PARTS
from selfrepair.plots.common import add_zero, panel_grid
from selfrepair.plots.style import COMPONENT_LABELS, styled, with_unit

__all__ = ["PANELS", "step_axis", "training_self_repair"]

# The panels of a model's row, left to right: self-repair and its parts (one y scale), the
# clipped LayerNorm share, the loss.
PANELS = (*CURVE_PARTS, "ln_share_clipped", "loss")


def step_axis(ax: Axes, steps: np.ndarray) -> None:
    """A log step axis that keeps step 0: symlog, linear below the first step after 0."""
    positive = steps[steps > 0]
    linthresh = float(positive.min()) if positive.size else 1.0
    ax.set_xscale("symlog", linthresh=linthresh, linscale=0.5)
    ax.set_xticks(steps)
    ax.set_xticklabels([f"{int(s):,}" for s in steps], rotation=60, fontsize=7)
    ax.minorticks_off()
    ax.set_xlabel("training step (symlog)")


def _layer_lines(ax: Axes, data: xr.DataArray, cmap, legend: bool) -> None:
    steps = data.step.values
    n_layers = data.sizes["layer"]
    for layer in range(n_layers):
        ax.plot(
            steps,
            data.isel(layer=layer).values,
            marker="o",
            markersize=3,
            color=cmap(layer / max(1, n_layers - 1)),
            label=f"layer {layer}" if legend else None,
        )


@styled
def training_self_repair(curves: Mapping[str, xr.Dataset], top_fraction: float = 0.02) -> Figure:
    """One row per model, six panels: per-layer mean self-repair on each head's top tokens and
    its three parts (other heads, MLP layers, final LayerNorm; one shared y scale), the clipped
    LayerNorm share, and the mean loss on the measured tokens, each against the training step.

    Args:
        curves: per model, analysis.training.training_curves (dims step, layer; loss: step).
        top_fraction: the share of each head's tokens its top selection keeps (labels).
    """
    import matplotlib as mpl

    models = list(curves)
    fig, axes = panel_grid(len(models) * len(PANELS), ncols=len(PANELS))
    cmap = mpl.colormaps["viridis"]
    for row, model in enumerate(models):
        data = curves[model]
        row_axes = dict(zip(PANELS, axes[row * len(PANELS) : (row + 1) * len(PANELS)], strict=True))
        for name, ax in row_axes.items():
            step_axis(ax, data.step.values)
            if name == "loss":
                ax.plot(data.step.values, data.loss.values, marker="o", color="#222222")
                ax.set_title(f"{model}: loss")
                ax.set_ylabel("mean next-token loss (nats)")
                continue
            _layer_lines(ax, data[name], cmap, legend=row == 0 and name == "self_repair")
            if name == "ln_share_clipped":
                ax.set_title(f"{model}: LayerNorm share")
                ax.set_ylabel(f"clipped LN share of DE\non top {top_fraction:.0%} tokens")
                ax.set_ylim(-0.05, 1.05)
            else:
                ax.set_title(f"{model}: {COMPONENT_LABELS[name]}")
                add_zero(ax, label=None)
                ax.set_ylabel(with_unit(f"layer mean on top {top_fraction:.0%}"))
        parts = [row_axes[p] for p in CURVE_PARTS]
        low = min(min(ax.get_ylim()[0] for ax in parts), 0.0)
        high = max(ax.get_ylim()[1] for ax in parts)
        for ax in parts:
            ax.set_ylim(low, high)
    fig.legend(loc="outside lower center", ncols=8)
    return fig
