"""Direct effect against total effect of ablating a head: Figs 2, 3, 5 and 21-24.

Both axes are drops caused by the ablation, clean minus ablated (selfrepair.analysis.reduce.effect_drops):
x, the head's own direct effect; y, the correct-token logit. On y = x the logit drops by exactly
the direct effect (no self-repair); on y = 0 it does not drop at all (full self-repair); the
vertical distance below y = x is the self-repair.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import xarray as xr
from matplotlib.cm import ScalarMappable
from matplotlib.colors import Normalize
from matplotlib.figure import Figure

from selfrepair.plots.common import (
    add_identity,
    add_zero,
    model_panels,
    outer_labels,
    panel_grid,
    square_limits,
)
from selfrepair.plots.per_head import DEPTH_LABEL, relative_depth
from selfrepair.plots.style import ABLATION_COLORS, HEAD_COLOR, styled, with_unit

__all__ = [
    "DEPTH_CMAP",
    "IDEAL_TITLES",
    "X_LABEL",
    "Y_LABEL",
    "heads_de_vs_logit_drop",
    "tokens_by_ablation",
    "tokens_de_vs_logit_drop",
]

X_LABEL = with_unit("direct effect drop")
Y_LABEL = with_unit("logit drop")
DEPTH_CMAP = "viridis"
IDEAL_TITLES = ("idealised: no self-repair", "idealised: full self-repair")


def _heads_panel(ax, drops: xr.Dataset, norm: Normalize, limits_from: xr.Dataset | None = None):
    depth, x = xr.broadcast(relative_depth(drops.de_drop), drops.de_drop)
    y = drops.logit_drop.broadcast_like(x)
    ax.scatter(
        x.values.ravel(),
        y.values.ravel(),
        c=depth.values.ravel(),
        cmap=DEPTH_CMAP,
        norm=norm,
        s=16,
        alpha=0.85,
        zorder=3,
    )
    ref = drops if limits_from is None else limits_from
    square_limits(ax, ref.de_drop.values, ref.logit_drop.values)


def _references(ax, legend: bool) -> None:
    add_identity(ax, label="y = x: no self-repair" if legend else None)
    add_zero(ax, label="y = 0: full self-repair" if legend else None)


@styled
def heads_de_vs_logit_drop(
    drops: Mapping[str, xr.Dataset],
    *,
    shown: Sequence[str] | None = None,
    titles: Mapping[str, str] | None = None,
    idealised_from: str | None = None,
    ylabel: str | None = None,
) -> Figure:
    """Fig 2 (one model) and Figs 21-24 (several): each head's mean direct-effect drop (x)
    against its mean logit drop (y), coloured by layer / n_layers, with y = x and y = 0; one
    panel per model in shown (default: every model of drops). idealised_from: also draw that
    model's heads as they would lie with no self-repair (on y = x) and with full self-repair
    (on y = 0), two extra panels. ylabel: the y axis' label instead of the mean logit drop (a
    task's metric)."""
    models = list(drops) if shown is None else list(shown)
    n_extra = 2 if idealised_from is not None else 0
    n_panels = len(models) + n_extra
    if n_panels == 0:
        raise ValueError("nothing to draw: no model shown and no idealised panels")
    ncols = min(n_panels, 3)
    fig, axes = panel_grid(n_panels, ncols=ncols)
    norm = Normalize(0.0, 1.0)
    for i, (model, ax) in enumerate(zip(models, axes, strict=False)):
        title = (titles or {}).get(model, model)
        if model not in title:
            raise ValueError(f"panel title {title!r} must name the model {model!r}")
        ax.set_title(title)
        _heads_panel(ax, drops[model], norm)
        _references(ax, legend=i == 0)
    if idealised_from is not None:
        ref = drops[idealised_from].de_drop
        ideal = {
            IDEAL_TITLES[0]: xr.Dataset({"de_drop": ref, "logit_drop": ref}),
            IDEAL_TITLES[1]: xr.Dataset({"de_drop": ref, "logit_drop": xr.zeros_like(ref)}),
        }
        for ax, (title, data) in zip(axes[len(models) :], ideal.items(), strict=True):
            ax.set_title(f"{title}\n({idealised_from}'s heads)")
            _heads_panel(ax, data, norm, limits_from=drops[idealised_from])
            _references(ax, legend=not models and title == IDEAL_TITLES[0])
    for ax in axes:
        ax.set_xlabel("mean " + X_LABEL)
        ax.set_ylabel(ylabel or "mean " + Y_LABEL)
    fig.legend(loc="outside lower center", ncols=2)
    fig.colorbar(ScalarMappable(norm=norm, cmap=DEPTH_CMAP), ax=axes, label=DEPTH_LABEL, shrink=0.8)
    return fig


def _token_alpha(n: int) -> float:
    """Dense clouds of a million tokens stay readable; a few hundred stay visible."""
    return float(np.clip(3000 / max(n, 1), 0.05, 0.6))


def _tokens_panel(ax, tokens: xr.Dataset, color: str) -> None:
    x, y = tokens.de_drop.values, tokens.logit_drop.values
    ax.scatter(x, y, s=3, color=color, alpha=_token_alpha(x.size), rasterized=True, zorder=3)


@styled
def tokens_de_vs_logit_drop(tokens: xr.Dataset, model: str, *, shared: bool = False) -> Figure:
    """Fig 3: one panel per head (tokens.head_name) of one model, every token's direct-effect
    drop (x) against its logit drop (y), with y = x and y = 0."""
    names = [str(n) for n in tokens.head_name.values]
    fig, axes = panel_grid(len(names), ncols=min(len(names), 2), sharex=shared, sharey=shared)
    for i, (name, ax) in enumerate(zip(names, axes, strict=True)):
        one = tokens.sel(head_name=name)
        _tokens_panel(ax, one, HEAD_COLOR)
        _references(ax, legend=i == 0)
        if not shared:
            square_limits(ax, one.de_drop.values, one.logit_drop.values)
        ax.set_title(f"{model} {name}")
        ax.set_xlabel(X_LABEL)
        ax.set_ylabel(Y_LABEL)
    if shared:
        square_limits(axes[0], tokens.de_drop.values, tokens.logit_drop.values)
    fig.legend(loc="outside lower center", ncols=2)
    return fig


@styled
def tokens_by_ablation(tokens: Mapping[str, xr.Dataset], title: str) -> Figure:
    """Fig 5: one head's tokens under each ablation (one panel per ablation, shared axes, so
    the ablations compare directly), with y = x and y = 0."""
    ablations = list(tokens)
    fig, axes = model_panels(
        ablations,
        titles={a: f"{title}, {a} ablation" for a in ablations},
        sharex=True,
        sharey=True,
        ncols=len(ablations),
    )
    xs = np.concatenate([t.de_drop.values.ravel() for t in tokens.values()])
    ys = np.concatenate([t.logit_drop.values.ravel() for t in tokens.values()])
    for i, (ablation, ax) in enumerate(axes.items()):
        _tokens_panel(ax, tokens[ablation], ABLATION_COLORS.get(ablation, HEAD_COLOR))
        _references(ax, legend=i == 0)
    outer_labels(list(axes.values()), X_LABEL, Y_LABEL, ncols=len(ablations))
    square_limits(next(iter(axes.values())), xs, ys)
    fig.legend(loc="outside lower center", ncols=2)
    return fig
