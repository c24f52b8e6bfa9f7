"""Figures of the mechanism experiments: Figs 4, 7, 8, 9, 15, 16-18 and 19.

Inputs are the stores of the mechanism stages (see selfrepair.stages.mechanisms), already
narrowed to what a figure shows; every function returns a Figure (conventions: common.py).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import xarray as xr
from matplotlib import colormaps
from matplotlib.colors import TwoSlopeNorm
from matplotlib.figure import Figure
from matplotlib.ticker import PercentFormatter

from selfrepair.plots.common import add_identity, add_zero, panel_grid, square_limits
from selfrepair.plots.style import ABLATION_COLORS, HEAD_COLOR, REFERENCE_COLOR, styled, with_unit

__all__ = [
    "DIVERGING_CMAP",
    "ONE_GID",
    "THRESHOLD_CMAP",
    "add_one",
    "cumulative_neuron_share",
    "ln_scale_ratio_hist",
    "neuron_threshold_curves",
    "resid_norm_ratio_hists",
    "self_repression_scatter",
    "top_neuron_scatter",
]

ONE_GID = "x=1"
DIVERGING_CMAP = "RdBu"
THRESHOLD_CMAP = "viridis"


def add_one(ax, label: str | None = "ratio = 1") -> None:
    """The vertical line at ratio 1 (no change), tagged so tests can find it."""
    ax.axvline(1.0, color=REFERENCE_COLOR, linestyle="--", linewidth=1.0, label=label, gid=ONE_GID)


def _centred_norm(values: np.ndarray) -> TwoSlopeNorm:
    """A colour scale with white at 0, symmetric, spanning the 98th percentile of |values| (a
    few outliers would otherwise wash every other point out to white)."""
    finite = np.abs(values[np.isfinite(values)])
    span = float(np.percentile(finite, 98)) if finite.size else 0.0
    return TwoSlopeNorm(0.0, -(span or 1.0), span or 1.0)


def _token_alpha(n: int) -> float:
    return float(np.clip(3000 / max(n, 1), 0.05, 0.7))


def _ratio_bins(arrays: Sequence[np.ndarray], n: int = 60) -> np.ndarray:
    """Bin edges shared by every panel, so their histograms compare bin for bin."""
    values = np.concatenate([np.ravel(a) for a in arrays])
    values = values[np.isfinite(values)]
    low, high = (values.min(), values.max()) if values.size else (0.0, 2.0)
    if low == high:
        low, high = low - 0.5, high + 0.5
    return np.linspace(low, high, n + 1)


def _ratio_hist(ax, values: np.ndarray, color: str, bins: np.ndarray) -> float:
    """Histogram of a ratio over tokens; returns the share above 1."""
    values = values[np.isfinite(values)]
    ax.hist(values, bins=bins, color=color, alpha=0.8)
    add_one(ax, label=None)
    return float(np.mean(values > 1)) if values.size else float("nan")


@styled
def ln_scale_ratio_hist(ratios: Mapping[str, xr.DataArray], title: str) -> Figure:
    """Fig 4: per ablation, the histogram of clean / ablated final-LN scale over the head's top
    tokens (ratios[ablation], any shape), with the line at 1 and the share above 1 in the
    panel title."""
    ablations = list(ratios)
    fig, axes = panel_grid(len(ablations), ncols=len(ablations), sharex=True, sharey=True)
    bins = _ratio_bins([ratios[a].values for a in ablations])
    for ax, ablation in zip(axes, ablations, strict=True):
        share = _ratio_hist(
            ax, np.ravel(ratios[ablation].values), ABLATION_COLORS.get(ablation, HEAD_COLOR), bins
        )
        ax.set_title(f"{title}, {ablation} ablation\n{share:.1%} of tokens above 1")
        ax.set_xlabel("clean / ablated final LayerNorm scale")
    axes[0].set_ylabel("tokens")
    return fig


@styled
def resid_norm_ratio_hists(norms: Mapping[str, xr.DataArray], model: str) -> Figure:
    """Figs 16-18: one row per ablation (norms[ablation], dims head, ...), one column per head:
    the histogram of ablated / clean final residual-stream norm over all tokens."""
    ablations = list(norms)
    heads = [str(h) for h in norms[ablations[0]]["head"].values]
    fig, axes = panel_grid(len(ablations) * len(heads), ncols=len(heads), sharex=True, sharey=True)
    bins = _ratio_bins([norms[a].values for a in ablations])
    for r, ablation in enumerate(ablations):
        for c, head in enumerate(heads):
            ax = axes[r * len(heads) + c]
            values = np.ravel(norms[ablation].sel(head=head).values)
            share = _ratio_hist(ax, values, ABLATION_COLORS.get(ablation, HEAD_COLOR), bins)
            ax.set_title(f"{model} {head}, {ablation} ablation\n{share:.1%} of tokens above 1")
            ax.set_xlabel("ablated / clean final residual norm")
            if c == 0:
                ax.set_ylabel("tokens")
    return fig


@styled
def top_neuron_scatter(red: xr.Dataset, title: str) -> Figure:
    """Fig 7: on each selected token (red: one head and selection of the neuron reductions),
    the best self-repairing neuron's clean (x) against ablated (y) direct effect, coloured by
    the whole MLP layer's clean direct effect; y = x and y = 0."""
    x, y = red.top_neuron_de_clean.values, red.top_neuron_de_ablated.values
    colour = red.mlp_de_clean.values
    fig, (ax,) = panel_grid(1, panel_size=(4.6, 3.8))
    points = ax.scatter(
        x,
        y,
        c=colour,
        cmap=DIVERGING_CMAP,
        norm=_centred_norm(colour),
        s=6,
        alpha=max(_token_alpha(x.size), 0.5),
        edgecolors="none",
        zorder=3,
        rasterized=True,
    )
    add_identity(ax, label="y = x: neuron unchanged")
    add_zero(ax, label=None)
    square_limits(ax, x, y)
    ax.set_title(title)
    ax.set_xlabel(with_unit("top neuron's clean direct effect"))
    ax.set_ylabel(with_unit("top neuron's ablated direct effect"))
    ax.legend(loc="upper left")
    fig.colorbar(points, ax=ax, label=with_unit("MLP layer's clean direct effect"))
    return fig


@styled
def neuron_threshold_curves(panels: Mapping[str, xr.DataArray], ranks: int = 50) -> Figure:
    """Fig 8: one panel per (title, repair_fraction[rank, threshold]): for k = 1..ranks, the
    share of tokens where the k-th best self-repairing neuron repairs at least t x the head's
    clean direct effect, one line per threshold t."""
    titles = list(panels)
    ncols = min(len(titles), 2)
    fig, axes = panel_grid(len(titles), ncols=ncols, sharex=True, sharey=True)
    thresholds = panels[titles[0]]["threshold"].values
    colours = {
        t: c
        for t, c in zip(
            thresholds,
            colormaps[THRESHOLD_CMAP](np.linspace(0, 0.9, len(thresholds))),
            strict=True,
        )
    }
    for i, (ax, title) in enumerate(zip(axes, titles, strict=True)):
        frac = panels[title].sel(rank=slice(1, ranks))
        for t in thresholds:
            ax.plot(
                frac["rank"].values,
                frac.sel(threshold=t).values,
                marker="o",
                markersize=2.5,
                linewidth=1.2,
                color=colours[t],
                label=f"{t:.0%}" if i == 0 else None,
            )
        ax.set_title(title)
        ax.set_ylim(0, 1)
        ax.yaxis.set_major_formatter(PercentFormatter(1.0))
        if i + ncols >= len(titles):
            ax.set_xlabel("k-th best self-repairing neuron")
        if i % ncols == 0:
            ax.set_ylabel("share of tokens")
    fig.legend(
        loc="outside lower center",
        ncols=len(thresholds),
        title="the neuron repairs at least this share of the head's clean direct effect",
    )
    return fig


@styled
def cumulative_neuron_share(red: xr.Dataset, title: str, ranks: int | None = None) -> Figure:
    """Fig 15, left: for k = 1.., the mean over tokens of the share of all neurons' absolute
    self-repair held by the k best self-repairing neurons, each dot coloured by the median clean
    direct effect of the k-th best neuron. Right: per neuron, most frequent first, the share of
    tokens where it is among the top_n best, coloured by its own median clean direct effect (few
    neurons repeat: the repair is spread; red: erasure neurons)."""
    share = red.cumulative_abs_share
    median = red.rank_median_clean_de
    if ranks is not None:
        share, median = share.sel(rank=slice(1, ranks)), median.sel(rank=slice(1, ranks))
    norm = _centred_norm(np.concatenate([median.values, red.median_clean_de.values]))
    fig, (left, right) = panel_grid(2, ncols=2, panel_size=(4.0, 3.2))
    points = left.scatter(
        share["rank"].values,
        share.values,
        c=median.values,
        cmap=DIVERGING_CMAP,
        norm=norm,
        s=8,
        zorder=3,
    )
    left.set_title(title)
    left.set_xlabel("top k self-repairing neurons")
    left.set_ylabel("share of total |neuron self-repair|")
    left.set_ylim(0, 1.02)
    left.yaxis.set_major_formatter(PercentFormatter(1.0))
    top_n = int(red.attrs.get("top_n", 10))
    order = np.argsort(-red.top_n_frequency.values, kind="stable")
    freq = red.top_n_frequency.values[order]
    n_shown = max(ranks or 0, int(np.count_nonzero(freq)), 1)
    right.bar(
        np.arange(1, n_shown + 1),
        freq[:n_shown],
        width=1.0,
        color=colormaps[DIVERGING_CMAP](norm(red.median_clean_de.values[order][:n_shown])),
        edgecolor="#999999",  # white (DE near 0) bars stay visible
        linewidth=0.3,
    )
    right.set_title(f"{title}\nmost frequent neuron: {freq[0]:.0%} of tokens")
    right.set_xlabel("neurons, most frequent first")
    right.set_ylabel(f"share of tokens in the top {top_n}")
    right.yaxis.set_major_formatter(PercentFormatter(1.0))
    fig.colorbar(points, ax=[left, right], label=with_unit("median clean direct effect"))
    return fig


@styled
def self_repression_scatter(
    ds: xr.Dataset, title: str, scales: Sequence[float] | None = None
) -> Figure:
    """Figs 9 and 19: one panel per scale s (ds: one head of the reinforcement store), each
    token's clean direct effect (x) against its direct effect after s x the head's output is
    added back to its input (y), with y = x (unchanged) and y = 0, and the least-squares slope."""
    scales = list(ds["scale"].values if scales is None else scales)
    fig, axes = panel_grid(len(scales), ncols=len(scales), sharex=True, sharey=True)
    x = ds.de_clean.values.ravel()
    all_y = np.concatenate([ds.de_new.sel(scale=s).values.ravel() for s in scales])
    for i, (ax, s) in enumerate(zip(axes, scales, strict=True)):
        y = ds.de_new.sel(scale=s).values.ravel()
        ax.scatter(x, y, s=5, color=HEAD_COLOR, alpha=_token_alpha(x.size), zorder=3)
        add_identity(ax, label="y = x: unchanged" if i == 0 else None)
        add_zero(ax, label=None)
        slope = float(ds.slope.sel(scale=s)) if "slope" in ds else float("nan")
        ax.set_title(f"{title}, scale {s:g}\nslope {slope:.2f}")
        ax.set_xlabel(with_unit("clean direct effect"))
        if i == 0:
            ax.set_ylabel(with_unit("direct effect with\noutput added"))
    for ax in axes:
        square_limits(ax, np.concatenate([x] * len(scales)), all_y)
    axes[0].legend(loc="upper left")
    return fig
