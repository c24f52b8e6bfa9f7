"""How much self-repair is left when LayerNorm scales are frozen at their clean values."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import xarray as xr
from matplotlib.figure import Figure

from selfrepair.plots.common import add_zero, model_panels
from selfrepair.plots.style import FROZEN_LN_COLORS, styled, with_unit

__all__ = ["frozen_ln_self_repair"]


@styled
def frozen_ln_self_repair(layers: Mapping[str, xr.DataArray], top_fraction: float = 0.02) -> Figure:
    """Per model (one panel each, shared y scale), the per-layer mean self-repair on top tokens
    for each LayerNorm treatment in layers[model] (dims variant, layer; see
    selfrepair.analysis.reduce.frozen_ln_layers): as measured, final LayerNorm frozen, every LayerNorm
    frozen."""
    models = list(layers)
    ncols = min(len(models), 3)
    fig, axes = model_panels(models, sharey=True, ncols=ncols)
    for i, (model, ax) in enumerate(axes.items()):
        data = layers[model]
        x = np.arange(data.sizes["layer"])
        for variant in data.variant.values:
            ax.plot(
                x,
                data.sel(variant=variant).values,
                marker="o",
                markersize=3.5,
                color=FROZEN_LN_COLORS[str(variant)],
                label=str(variant) if i == 0 else None,
            )
        add_zero(ax, label=None)
        step = max(1, int(np.ceil(len(x) / 8)))
        ax.set_xticks(x[::step])
    for i, ax in enumerate(axes.values()):
        ax.set_xlabel("layer of the ablated head")  # layer counts differ: label every panel
        if i % ncols == 0:
            ax.set_ylabel(with_unit(f"layer mean of self-repair\non top {top_fraction:.0%} tokens"))
    fig.legend(loc="outside lower center", ncols=3)
    return fig
