"""Per-head values against relative depth, one panel per model: Figs 1, 6 and 11."""

from __future__ import annotations

from collections.abc import Mapping

import xarray as xr
from matplotlib.figure import Figure

from selfrepair.analysis.reduce import layer_mean
from selfrepair.plots.common import add_zero, model_panels, outer_labels, panel_grid
from selfrepair.plots.style import HEAD_COLOR, MEAN_COLOR, styled, with_unit

__all__ = [
    "DEPTH_LABEL",
    "LN_SHARE_LABEL",
    "ln_share_clipped_and_unclipped",
    "ln_share_per_head",
    "per_head_by_depth",
    "relative_depth",
    "self_repair_per_head",
]

DEPTH_LABEL = "layer / number of layers"


def relative_depth(da: xr.DataArray) -> xr.DataArray:
    """layer / n_layers for each layer of a (layer, head) array (the paper's x axis)."""
    return da.layer.astype(float) / da.sizes["layer"]


def _draw_heads(ax, values: xr.DataArray, interval: xr.DataArray | None, label_first: bool):
    depth = relative_depth(values)
    x, y = xr.broadcast(depth, values)
    ax.scatter(
        x.values.ravel(),
        y.values.ravel(),
        s=14,
        color=HEAD_COLOR,
        alpha=0.7,
        zorder=3,
        label="head" if label_first else None,
    )
    if interval is not None:
        lo = interval.sel(bound="low").broadcast_like(values)
        hi = interval.sel(bound="high").broadcast_like(values)
        level = interval.attrs.get("level")
        ax.vlines(
            x.values.ravel(),
            lo.values.ravel(),
            hi.values.ravel(),
            color=HEAD_COLOR,
            alpha=0.35,
            linewidth=0.9,
            zorder=2,
            label=(f"{level:.0%} bootstrap interval" if level else "bootstrap interval")
            if label_first
            else None,
        )
    ax.plot(
        depth.values,
        layer_mean(values).values,
        color=MEAN_COLOR,
        marker="o",
        markersize=3,
        zorder=4,
        label="layer mean" if label_first else None,
    )


@styled
def per_head_by_depth(
    summaries: Mapping[str, xr.Dataset],
    variable: str,
    ylabel: str,
    *,
    intervals: Mapping[str, xr.DataArray] | None = None,
    sharey: bool = True,
    ylim: tuple[float, float] | None = None,
) -> Figure:
    """Dots: summaries[model][variable] of every head at x = layer / n_layers; line: the mean
    over the heads of each layer; optional vertical bars: intervals[model] with a `bound`
    dimension (low, high). One panel per model, y scale shared unless sharey is False."""
    models = list(summaries)
    ncols = min(len(models), 3)
    fig, axes = model_panels(models, sharex=True, sharey=sharey, ncols=ncols)
    for i, (model, ax) in enumerate(axes.items()):
        interval = None if intervals is None else intervals[model]
        _draw_heads(ax, summaries[model][variable], interval, label_first=i == 0)
        add_zero(ax, label=None)
        ax.set_xlim(-0.05, 1.0)
        if ylim is not None:
            ax.set_ylim(*ylim)
    if sharey:
        outer_labels(list(axes.values()), DEPTH_LABEL, ylabel, ncols=ncols)
    else:
        for ax in axes.values():
            ax.set_xlabel(DEPTH_LABEL)
            ax.set_ylabel(ylabel)
    next(iter(axes.values())).legend(loc="best")
    return fig


def self_repair_per_head(
    summaries: Mapping[str, xr.Dataset],
    intervals: Mapping[str, xr.DataArray] | None = None,
    top_fraction: float = 0.02,
    label: str | None = None,
) -> Figure:
    """Fig 1: each head's mean self-repair on its top tokens, by relative depth (label: the y
    axis' instead of the top selection's, e.g. a task's answers)."""
    return per_head_by_depth(
        summaries,
        "top_self_repair",
        with_unit(label or f"self-repair, top {top_fraction:.0%} tokens"),
        intervals=intervals,
    )


LN_SHARE_LABEL = "LayerNorm share of direct effect"


def ln_share_per_head(
    summaries: Mapping[str, xr.Dataset],
    intervals: Mapping[str, xr.DataArray] | None = None,
    top_fraction: float = 0.02,
) -> Figure:
    """Fig 6: each head's LayerNorm share of its direct effect (sr_ln / clean DE per token,
    clipped to [0, 1]) averaged over its top tokens, by relative depth."""
    return per_head_by_depth(
        summaries,
        "top_ln_share_clipped",
        f"{LN_SHARE_LABEL}\n(clipped to [0, 1], top {top_fraction:.0%} tokens)",
        intervals=intervals,
        ylim=(-0.05, 1.05),
    )


@styled
def ln_share_clipped_and_unclipped(
    summaries: Mapping[str, xr.Dataset],
    intervals: Mapping[str, xr.Dataset] | None = None,
    top_fraction: float = 0.02,
) -> Figure:
    """Fig 11: per model, the clipped share (left, as Fig 6) beside the unclipped one (right,
    its own scale: single tokens with a tiny clean DE make it wild). intervals[model] holds
    top_ln_share_clipped and top_ln_share with a `bound` dimension."""
    models = list(summaries)
    fig, axes = panel_grid(2 * len(models), ncols=2, sharex=True)
    columns = (("top_ln_share_clipped", "clipped to [0, 1]"), ("top_ln_share", "unclipped"))
    for row, model in enumerate(models):
        for col, (variable, kind) in enumerate(columns):
            ax = axes[2 * row + col]
            interval = None if intervals is None else intervals[model][variable]
            _draw_heads(ax, summaries[model][variable], interval, label_first=row == col == 0)
            add_zero(ax, label=None)
            ax.set_title(f"{model}: {kind}")
            ax.set_ylabel(f"{LN_SHARE_LABEL}\n({kind}, top {top_fraction:.0%} tokens)")
            if kind.startswith("clipped"):
                ax.set_ylim(-0.05, 1.05)
            if row == len(models) - 1:
                ax.set_xlabel(DEPTH_LABEL)
    fig.legend(loc="outside lower center", ncols=3)
    return fig
