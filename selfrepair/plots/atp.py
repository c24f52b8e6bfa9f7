"""Attribution patching against the exact ablation effects (analysis.atp): the estimate against
the exact effect per head, coloured by the head's self-repair, and the estimation error against
the self-repair."""

from __future__ import annotations

from collections.abc import Mapping

import matplotlib as mpl
import numpy as np
import xarray as xr
from matplotlib.axes import Axes
from matplotlib.colors import TwoSlopeNorm
from matplotlib.figure import Figure

from selfrepair.plots.common import ZERO_GID, add_identity, add_zero, panel_grid, square_limits
from selfrepair.plots.style import REFERENCE_COLOR, styled, with_unit

__all__ = ["MINUS_X_GID", "atp_error", "atp_scatter"]

MINUS_X_GID = "y=-x"
SELECTION_LABELS = {"all": "all tokens", "top": "top {fraction:.0%} tokens"}


def _label(sel: str, top_fraction: float) -> str:
    if top_fraction >= 1:  # a task's (rules/atp.smk): all its answers, each head's top tokens
        return "every answer"
    return SELECTION_LABELS[sel].format(fraction=top_fraction)


def _repair_norm(values: np.ndarray) -> TwoSlopeNorm:
    """A colour scale centred on 0 spanning these self-repair values."""
    finite = np.abs(values[np.isfinite(values)])
    lim = float(finite.max()) if finite.size else 1.0
    return TwoSlopeNorm(0.0, -(lim or 1.0), lim or 1.0)


def _repair_bar(fig: Figure, points, ax: Axes) -> None:
    bar = fig.colorbar(points, ax=ax, shrink=0.8, pad=0.02)
    bar.set_label(with_unit("self-repair"), fontsize=8)
    bar.ax.tick_params(labelsize=7)


def _scatter(ax: Axes, x, y, colour, norm, marker="o", label=None):
    return ax.scatter(
        np.ravel(x),
        np.ravel(y),
        c=np.ravel(colour),
        cmap="coolwarm",
        norm=norm,
        s=22,
        marker=marker,
        edgecolors="#333333",
        linewidths=0.4,
        label=label,
    )


@styled
def atp_scatter(summaries: Mapping[str, xr.Dataset], top_fraction: float = 0.02) -> Figure:
    """Per model (a row of panels), one point per head: the AtP estimate against the exact
    change of the correct-token logit (mean over all tokens; over the head's top tokens), and
    on the top tokens the estimated |change| per token (AtP, and AtP*'s GradDrop) against the
    exact |change|; coloured by the head's self-repair on the same tokens; y = x is a perfect
    estimate.

    Args:
        summaries: per model, its atp_summary store (analysis.atp) under one ablation.
        top_fraction: the top selection, for the labels.
    """
    models = list(summaries)
    fig, axes = panel_grid(3 * len(models), ncols=3, panel_size=(3.6, 3.2))
    for row, model in enumerate(models):
        s = summaries[model]
        panels = axes[3 * row : 3 * row + 3]
        for ax, sel in zip(panels[:2], ("all", "top"), strict=True):
            x, y = s[f"{sel}_exact"].values, s[f"{sel}_atp"].values
            repair = s[f"{sel}_self_repair"].values
            points = _scatter(ax, x, y, repair, _repair_norm(repair))
            rho = float(s[f"{sel}_spearman_atp"])
            ax.set_title(f"{model}, {_label(sel, top_fraction)}\nAtP, Spearman {rho:.2f}")
            ax.set_xlabel(with_unit("exact mean Δlogit"))
            ax.set_ylabel(with_unit("AtP estimate"))
            add_identity(ax, label="y = x (exact)")
            square_limits(ax, x, y)
            _repair_bar(fig, points, ax)
        ax = panels[2]
        x, repair = s.top_abs_exact.values, s.top_self_repair.values
        norm = _repair_norm(repair)
        points = _scatter(ax, x, s.top_abs_atp.values, repair, norm, label="AtP")
        _scatter(ax, x, s.top_graddrop.values, repair, norm, "^", "GradDrop")
        rho = (float(s.top_spearman_abs_atp), float(s.top_spearman_graddrop))
        graddrop = f"GradDrop {rho[1]:.2f}" if np.isfinite(rho[1]) else "no GradDrop here"
        ax.set_title(
            f"{model}, {_label('top', top_fraction)}, |Δlogit|\n"
            f"Spearman AtP {rho[0]:.2f}, {graddrop}"
        )
        ax.set_xlabel(with_unit("exact mean |Δlogit|"))
        ax.set_ylabel(with_unit("estimated mean |Δlogit|"))
        add_identity(ax, label="y = x (exact)")
        square_limits(ax, x, np.concatenate([s.top_abs_atp.values, s.top_graddrop.values]))
        ax.legend(loc="upper left", fontsize=7)
        _repair_bar(fig, points, ax)
    return fig


@styled
def atp_error(summaries: Mapping[str, xr.Dataset], top_fraction: float = 0.02) -> Figure:
    """Per model, one point per head: AtP's error (estimate - exact) against the head's measured
    self-repair, over all tokens and over its top tokens, coloured by layer. On y = -x the error
    is all self-repair (AtP saw none of it); on y = 0 AtP is exact. Titles: the share of the
    error's variance over heads the self-repair accounts for (r²), and the slope of AtP's
    indirect term (its estimate of the self-repair) on the measured self-repair.

    Args:
        summaries: per model, its atp_summary store under one ablation.
        top_fraction: the top selection, for the labels.
    """
    models = list(summaries)
    fig, axes = panel_grid(2 * len(models), ncols=2, panel_size=(3.8, 3.4))
    for row, model in enumerate(models):
        s = summaries[model]
        n_layers = s.sizes["layer"]
        layer = np.broadcast_to(s.layer.values[:, None], s["all_exact"].shape)
        cmap = mpl.colormaps["viridis"].resampled(n_layers)
        for ax, sel in zip(axes[2 * row : 2 * row + 2], ("all", "top"), strict=True):
            x, y = s[f"{sel}_self_repair"].values, s[f"{sel}_atp_error"].values
            points = ax.scatter(
                x.ravel(),
                y.ravel(),
                c=layer.ravel(),
                cmap=cmap,
                vmin=-0.5,
                vmax=n_layers - 0.5,
                s=22,
                edgecolors="#333333",
                linewidths=0.4,
            )
            ax.axline(
                (0.0, 0.0),
                slope=-1.0,
                color=REFERENCE_COLOR,
                linestyle="--",
                linewidth=1.0,
                gid=MINUS_X_GID,
                label="y = −x (error is all self-repair)",
            )
            add_zero(ax, label="y = 0 (AtP exact)")
            r2, seen = float(s[f"{sel}_error_r2_self_repair"]), float(s[f"{sel}_repair_seen"])
            ax.set_title(
                f"{model}, {_label(sel, top_fraction)}\nr² with self-repair {r2:.2f}; "
                f"AtP's indirect\nterm ≈ {seen:.2f} × self-repair",
                fontsize=9,
            )
            ax.set_xlabel(with_unit("head's self-repair"))
            ax.set_ylabel(with_unit("AtP − exact Δlogit"))
        bar = fig.colorbar(points, ax=list(axes[2 * row : 2 * row + 2]), shrink=0.85)
        bar.set_label("layer")
        bar.set_ticks(range(n_layers))
    lines = [h for h in axes[0].get_lines() if h.get_gid() in (MINUS_X_GID, ZERO_GID)]
    fig.legend(handles=lines, loc="outside lower center", ncols=2, fontsize=8)
    return fig
