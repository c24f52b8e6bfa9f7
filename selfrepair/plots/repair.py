"""Who repairs whom (engine.attribution): the heatmap of every ablated head against every
repairing component, the bar chart of the most self-repaired heads' top repairers, and the
per-token scatter of one repairer against the ablated head's drop in direct effect."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import matplotlib as mpl
import numpy as np
import xarray as xr
from matplotlib.colors import TwoSlopeNorm
from matplotlib.figure import Figure
from matplotlib.patches import Patch

from selfrepair.plots.common import add_identity, add_zero, model_panels, panel_grid
from selfrepair.plots.style import COMPONENT_COLORS, HEAD_COLOR, styled, with_unit
from selfrepair.variables import head_label

__all__ = ["KIND_COLORS", "repair_bars", "repair_heatmap", "repair_scatter"]

# A repairer's bar is coloured by what it is: another head, an MLP layer, the final LayerNorm.
KIND_COLORS = {
    "head": COMPONENT_COLORS["sr_heads"],
    "mlp": COMPONENT_COLORS["sr_mlps"],
    "ln": COMPONENT_COLORS["sr_ln"],
}
# The heatmap's colour scale ends at this quantile of |share|: a few heads with tiny self-repair
# have huge shares and would wash out the rest (the bar chart and table give the values).
SHARE_QUANTILE = 0.98


@styled
def repair_heatmap(
    shares: Mapping[str, xr.DataArray],
    top_fraction: float = 0.02,
    selection: str | None = None,
    *,
    masked: Mapping[str, xr.DataArray] | None = None,
    limit: float | None = None,
) -> Figure:
    """Per model, the share of each ablated head's self-repair on its top tokens (rows, by
    layer) taken by each component (columns: heads by layer, MLP layers, final LayerNorm);
    grey where the component does not read the head.

    Args:
        shares: per model, top_share (dims layer, head, component) of its repair summary.
        top_fraction: the top selection, for the colour bar's label.
        selection: the colour bar's name of the tokens instead (a task's: its answers).
        masked: per model, the heads (layer, head: bool) whose row is drawn grey (a task's heads
            of near-zero self-repair, whose shares are noise).
        limit: the colour scale's end, shares beyond it clipped (said on the colour bar);
            default the SHARE_QUANTILE quantile of |share|.
    """
    selection = selection or f"top {top_fraction:.0%} tokens"
    models = list(shares)
    fig, axes = model_panels(models, ncols=1, panel_size=(9.0, 4.2))
    for model, ax in axes.items():
        share = shares[model]
        hidden = None if masked is None or model not in masked else masked[model]
        values, layers, labels = _heatmap_rows(share, hidden)
        finite = np.abs(values[np.isfinite(values)])
        lim = float(np.quantile(finite, SHARE_QUANTILE)) if finite.size else 1.0
        if limit is not None:
            lim = limit
        cmap = _grey_nan("RdBu_r")
        image = ax.imshow(
            values,
            aspect="auto",
            interpolation="nearest",
            cmap=cmap,
            norm=TwoSlopeNorm(0.0, -(lim or 1.0), lim or 1.0),
        )
        n_layers, n_heads = share.sizes["layer"], share.sizes["head"]
        ax.grid(False)
        # Layer boundaries of the rows and of the columns, drawn in pairs (the order of the
        # drawing, and so the PDF's bytes, as when every row was drawn).
        row_edges = list(np.flatnonzero(np.diff(layers)) + 0.5)
        col_edges = list(np.arange(1, n_layers) * n_heads - 0.5)
        for i in range(max(len(row_edges), len(col_edges))):
            if i < len(row_edges):
                ax.axhline(row_edges[i], color="white", linewidth=0.8)
            if i < len(col_edges):
                ax.axvline(col_edges[i], color="white", linewidth=0.8)
        ax.axvline(n_layers * n_heads - 0.5, color="black", linewidth=0.8)  # heads | MLPs
        step = max(1, len(labels) // 48)
        ax.set_yticks(np.arange(0, len(labels), step), labels[::step], fontsize=6)
        names = [str(c) for c in share.component.values]
        step = max(1, len(names) // 64)
        ax.set_xticks(np.arange(0, len(names), step), names[::step], rotation=90, fontsize=6)
        ax.set_xlabel("repairing component")
        ax.set_ylabel("ablated head")
        fig.colorbar(
            image,
            ax=ax,
            label=f"share of the head's self-repair\n({selection})"
            + ("" if limit is None else f", clipped to [{-limit:g}, {limit:g}]"),
            extend="both",
        )
    return fig


def _heatmap_rows(
    share: xr.DataArray, masked: xr.DataArray | None
) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """The heatmap's rows [ablated, component], their layers and labels: only the measured heads
    (a `heads:` subset leaves the others' rows all NaN), a masked head's row NaN (still a row,
    labelled so)."""
    rows = share.stack(ablated=("layer", "head")).transpose("ablated", "component")
    values = rows.values.astype(float)
    measured = np.isfinite(values).any(axis=1)
    kept = measured if measured.any() else np.ones(len(values), bool)
    hidden = np.zeros(len(values), bool)
    if masked is not None:
        hidden = masked.stack(ablated=("layer", "head")).sel(ablated=rows.ablated).values
        values = np.where(hidden[:, None], np.nan, values)
    layers, heads = rows.layer.values[kept], rows["head"].values[kept]
    labels = [
        head_label(int(la), int(h)) + (" (masked)" if m else "")
        for la, h, m in zip(layers, heads, hidden[kept].astype(bool), strict=True)
    ]
    return values[kept], layers, labels


def _grey_nan(name: str):
    cmap = mpl.colormaps[name].copy()
    cmap.set_bad("#dddddd")
    return cmap


@styled
def repair_bars(
    panels: Sequence[dict],
    top_fraction: float = 0.02,
    level: float = 0.95,
    selection: str | None = None,
) -> Figure:
    """One panel per (model, ablated head): its top repairers' mean change of direct effect on
    its top tokens with bootstrap intervals, coloured by kind, beside the head's self-repair.

    Args:
        panels: dicts with model, head (label), self_repair (the head's mean on its top
            tokens), and repairers: a DataFrame-like of component, kind, top_dde, ci_low, ci_high.
        top_fraction, level: for the labels.
        selection: the x label's name of the tokens instead (a task's: its answers).
    """
    selection = selection or f"top {top_fraction:.0%}"
    fig, axes = panel_grid(len(panels), ncols=min(3, len(panels)), panel_size=(3.8, 3.0))
    for panel, ax in zip(panels, axes, strict=True):
        rep = panel["repairers"]
        slots = max(len(p["repairers"]) for p in panels)  # one bar height in every panel
        y = slots - 1 - np.arange(len(rep))
        err = np.array([rep["top_dde"] - rep["ci_low"], rep["ci_high"] - rep["top_dde"]])
        ax.barh(
            y,
            rep["top_dde"],
            xerr=np.where(np.isfinite(err), err, 0.0),
            color=[KIND_COLORS[k] for k in rep["kind"]],
            capsize=2,
        )
        ax.set_yticks(y, list(rep["component"]), fontsize=7)
        ax.set_ylim(-0.6, slots - 0.4)
        ax.axvline(
            panel["self_repair"], color=COMPONENT_COLORS["self_repair"], linestyle="--", linewidth=1
        )
        ax.axvline(0.0, color="#555555", linewidth=0.8)
        ax.set_title(
            f"{panel['model']} {panel['head']}\nself-repair {panel['self_repair']:.3g}", fontsize=8
        )
        ax.set_xlabel(with_unit(f"mean change of DE, {selection}"))
    legend = [
        Patch(color=c, label=k)
        for k, c in (
            ("other head", KIND_COLORS["head"]),
            ("MLP layer", KIND_COLORS["mlp"]),
            ("final LayerNorm", KIND_COLORS["ln"]),
        )
    ]
    legend.append(
        Patch(
            facecolor="none",
            edgecolor=COMPONENT_COLORS["self_repair"],
            linestyle="--",
            label="head's total self-repair",
        )
    )
    fig.legend(
        handles=legend,
        loc="outside lower center",
        ncols=4,
        title=f"bars: {level:.0%} bootstrap intervals",
    )
    return fig


@styled
def repair_scatter(panels: Sequence[dict], top_fraction: float = 0.02) -> Figure:
    """Per model, one repairer's change of direct effect against the ablated head's drop in
    direct effect, on each of the head's top tokens; y = x would be full repair by it alone.

    Args:
        panels: dicts with model, head, repairer (labels), de_drop and dde (per token).
        top_fraction: for the labels.
    """
    fig, axes = panel_grid(len(panels), ncols=min(3, len(panels)), panel_size=(3.4, 3.0))
    for panel, ax in zip(panels, axes, strict=True):
        ax.scatter(panel["de_drop"], panel["dde"], s=6, alpha=0.6, color=HEAD_COLOR, linewidths=0)
        add_identity(ax, label="y = x (full repair)")
        add_zero(ax, label="y = 0")
        n = len(panel["dde"])
        ax.set_title(
            f"{panel['model']}: {panel['repairer']} repairing {panel['head']}\n"
            f"its top {top_fraction:.0%} tokens ({n})",
            fontsize=8,
        )
        ax.set_xlabel(with_unit(f"{panel['head']}'s drop in DE"))
        ax.set_ylabel(with_unit(f"{panel['repairer']}'s change of DE"))
    fig.axes[0].legend(loc="upper left", fontsize=7)
    return fig
