"""The look shared by every figure: font sizes, panel size, colours and axis-label wording.

Plotting functions decorate themselves with `styled`, so the style applies to everything they
draw without touching matplotlib's global state.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import ParamSpec, TypeVar

import matplotlib as mpl

from selfrepair.ablations import KINDS

__all__ = [
    "ABLATION_COLORS",
    "COMPONENT_COLORS",
    "COMPONENT_LABELS",
    "FROZEN_LN_COLORS",
    "HEAD_COLOR",
    "MEAN_COLOR",
    "PANEL_SIZE",
    "PNG_DPI",
    "RC_PARAMS",
    "REFERENCE_COLOR",
    "UNIT",
    "styled",
    "with_unit",
]

P = ParamSpec("P")
R = TypeVar("R")

# Readable when a figure is shrunk to a column width of a paper or shown in the HTML report.
RC_PARAMS = {
    "font.size": 10,
    "axes.titlesize": 10.5,
    "axes.labelsize": 10,
    "xtick.labelsize": 9,
    "ytick.labelsize": 9,
    "legend.fontsize": 8.5,
    "legend.frameon": False,
    "figure.titlesize": 12,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "axes.grid": True,
    "grid.alpha": 0.25,
    "grid.linewidth": 0.6,
    "lines.linewidth": 1.6,
    "scatter.edgecolors": "none",
    "pdf.fonttype": 42,  # TrueType: text stays editable and searchable in the PDF
    "ps.fonttype": 42,
    "savefig.bbox": "tight",
    "savefig.pad_inches": 0.05,
}

PANEL_SIZE = (3.4, 2.8)  # inches per panel
PNG_DPI = 200

UNIT = "logits"

# One colour per ablation, per part of the decomposition and per LayerNorm treatment, used
# identically in every figure.
ABLATION_COLORS = {name: kind.color for name, kind in KINDS.items() if kind.color}
COMPONENT_COLORS = {
    "self_repair": "#222222",
    "sr_heads": "#1f77b4",
    "sr_mlps": "#d62728",
    "sr_ln": "#9467bd",
}
COMPONENT_LABELS = {
    "self_repair": "total self-repair",
    "sr_heads": "other heads",
    "sr_mlps": "MLP layers",
    "sr_ln": "final LayerNorm",
}
FROZEN_LN_COLORS = {  # keys: selfrepair.analysis.reduce.FROZEN_LN_VARIANTS
    "normal": "#222222",
    "final LN frozen": "#1f77b4",
    "every LN frozen": "#d62728",
}
HEAD_COLOR = "#4c72b0"  # dots for heads
MEAN_COLOR = "#c44e52"  # per-layer mean lines
REFERENCE_COLOR = "#555555"  # y = x, y = 0


def with_unit(quantity: str, unit: str = UNIT) -> str:
    """An axis label with its unit, e.g. 'self-repair (logits)'."""
    return f"{quantity} ({unit})"


def styled(func: Callable[P, R]) -> Callable[P, R]:
    """Run a plotting function under the shared rcParams (restored afterwards)."""

    @functools.wraps(func)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        with mpl.rc_context(RC_PARAMS):
            return func(*args, **kwargs)

    return wrapper
