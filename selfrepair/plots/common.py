"""Building blocks of every figure: panel grids, reference lines, labels and atomic saving.

Conventions (every plotting function follows them):
- a plotting function takes xarray objects (and plain options) and returns a
  `matplotlib.figure.Figure`; it never reads or writes files and never uses pyplot's global
  figure registry, so tests can inspect the returned object;
- it is decorated with `style.styled`;
- one panel per model (`model_panels`), titled with the model's name;
- quantities in logits say so in the axis label (`style.with_unit`);
- reference lines come from `add_identity` (y = x) and `add_zero` (y = 0), which tag them with
  a gid so tests can find them;
- it never opens a store: selfrepair.stages.figures opens and checks them, then saves with
  `save_figure(fig, pdf, png)`.
"""

from __future__ import annotations

import math
import os
import textwrap
from collections.abc import Sequence
from pathlib import Path

import matplotlib as mpl
import numpy as np
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from selfrepair.plots.style import PANEL_SIZE, PNG_DPI, REFERENCE_COLOR

__all__ = [
    "IDENTITY_GID",
    "UNDATED",
    "ZERO_GID",
    "add_identity",
    "add_zero",
    "model_panels",
    "outer_labels",
    "panel_grid",
    "reference_lines",
    "save_figure",
    "saved",
    "square_limits",
    "titled",
]

IDENTITY_GID = "y=x"
# Metadata that would date a figure file: left out, so that a rerun writes the same bytes (PNGs
# carry no date; their "Software" entry is matplotlib's version).
UNDATED = {fmt: {"CreationDate": None} for fmt in ("pdf", "ps", "eps")} | {"svg": {"Date": None}}
ZERO_GID = "y=0"


def saved(fig: Figure, paths: Sequence[str | os.PathLike]) -> Figure:
    """fig, first saved to `paths` when there are any (save_figure): a stage function returns
    its figure, and saves it where its rule says."""
    if paths:
        save_figure(fig, *paths)
    return fig


def titled(fig: Figure, title: str, min_width: float = 6.5) -> Figure:
    """fig under `title`, wrapped to its width (13 characters an inch); a figure narrower than
    min_width inches is widened to it and made an inch taller, room for the title and the long
    axis labels of one panel."""
    width, height = fig.get_size_inches()
    if width < min_width:
        width, height = min_width, height + 1.0
        fig.set_size_inches(width, height)
    fig.suptitle(textwrap.fill(title, int(width * 13)), fontsize=9)
    return fig


def save_figure(fig: Figure, *paths: str | os.PathLike, dpi: int = PNG_DPI) -> None:
    """Save fig to each path (format from the suffix: .pdf, .png, .svg), atomically: written
    under a temporary name in the same directory, then renamed, so a killed job never leaves a
    truncated figure behind. No creation date is written (reruns give identical files)."""
    if not paths:
        raise ValueError("save_figure needs at least one output path")
    for path in map(Path, paths):
        fmt = path.suffix.lstrip(".").lower()
        if not fmt:
            raise ValueError(f"{path}: give the figure file a suffix (.pdf, .png)")
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
        try:
            # A fixed salt: SVG element ids are otherwise random per process.
            with mpl.rc_context({"svg.hashsalt": "selfrepair"}):
                fig.savefig(tmp, format=fmt, dpi=dpi, metadata=UNDATED.get(fmt))
            os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)


def panel_grid(
    n_panels: int,
    *,
    ncols: int | None = None,
    sharex: bool = False,
    sharey: bool = False,
    panel_size: tuple[float, float] = PANEL_SIZE,
) -> tuple[Figure, list[Axes]]:
    """A figure of n_panels axes in rows of ncols (default: up to 3 per row), row by row.

    Empty grid cells are removed, so `fig.axes` holds exactly the panels. With shared axes,
    tick labels stay on every panel that has no panel below it (or to its left).
    """
    if n_panels < 1:
        raise ValueError("a figure needs at least one panel")
    ncols = ncols or min(n_panels, 3)
    nrows = math.ceil(n_panels / ncols)
    fig = Figure(figsize=(panel_size[0] * ncols, panel_size[1] * nrows), layout="constrained")
    grid = fig.subplots(nrows, ncols, sharex=sharex, sharey=sharey, squeeze=False)
    for ax in grid.ravel()[n_panels:]:
        fig.delaxes(ax)
    for index, ax in enumerate(grid.ravel()[:n_panels]):
        # A panel whose lower neighbour was removed shows its own x tick labels.
        if sharex and index + ncols >= n_panels:
            ax.xaxis.set_tick_params(labelbottom=True)
    return fig, list(grid.ravel()[:n_panels])


def model_panels(
    models: Sequence[str],
    *,
    titles: dict[str, str] | None = None,
    **grid_kwargs,
) -> tuple[Figure, dict[str, Axes]]:
    """One panel per model, titled with its name (or titles[model], which must contain it)."""
    if len(set(models)) != len(models):
        raise ValueError(f"models listed twice: {list(models)}")
    fig, axes = panel_grid(len(models), **grid_kwargs)
    for model, ax in zip(models, axes, strict=True):
        title = (titles or {}).get(model, model)
        if model not in title:
            raise ValueError(f"panel title {title!r} must name the model {model!r}")
        ax.set_title(title)
    return fig, dict(zip(models, axes, strict=True))


def outer_labels(axes: Sequence[Axes], xlabel: str, ylabel: str, *, ncols: int) -> None:
    """x labels on panels with nothing below, y labels on the first column (shared axes);
    use `ax.set_xlabel` on every panel when scales are not shared."""
    n = len(axes)
    for index, ax in enumerate(axes):
        if index + ncols >= n:
            ax.set_xlabel(xlabel)
        if index % ncols == 0:
            ax.set_ylabel(ylabel)


def add_identity(ax: Axes, label: str | None = "y = x (no self-repair)") -> Line2D:
    """The y = x line across the whole panel, whatever the limits become."""
    return ax.axline(
        (0.0, 0.0),
        slope=1.0,
        color=REFERENCE_COLOR,
        linestyle="--",
        linewidth=1.0,
        zorder=1,
        label=label,
        gid=IDENTITY_GID,
    )


def add_zero(ax: Axes, label: str | None = "y = 0") -> Line2D:
    return ax.axhline(
        0.0,
        color=REFERENCE_COLOR,
        linestyle=":",
        linewidth=1.0,
        zorder=1,
        label=label,
        gid=ZERO_GID,
    )


def reference_lines(ax: Axes) -> set[str]:
    """The reference lines present on a panel (by gid), for checks and tests."""
    return {line.get_gid() for line in ax.get_lines() if line.get_gid() in (IDENTITY_GID, ZERO_GID)}


def square_limits(ax: Axes, x: np.ndarray, y: np.ndarray, pad: float = 0.05) -> None:
    """Equal x and y ranges covering 0 and the data, so y = x is the diagonal."""
    values = np.concatenate([np.ravel(x), np.ravel(y), [0.0]])
    values = values[np.isfinite(values)]
    lo, hi = float(values.min()), float(values.max())
    span = (hi - lo) or 1.0
    lo, hi = lo - pad * span, hi + pad * span
    ax.set_xlim(lo, hi)
    ax.set_ylim(lo, hi)
    ax.set_aspect("equal", adjustable="box")
