"""The method comparison's figure: each method's ROC-AUC of ranking the expected backups first,
with its bootstrap interval over prompts, CoAx's published value marked where the protocol
matches (analysis.methods.COAX_ROC_AUC). Drawing only."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

__all__ = ["methods_figure"]


def methods_figure(
    table: pd.DataFrame, anchors: bool = False, n_prompts: int | None = None
) -> plt.Figure:
    """Horizontal bars of table.roc_auc per method (best on top), roc_auc_low/high as error bars,
    chance (0.5) dashed; with anchors, coax_roc_auc as a red diamond where given. The legend sits
    above the axes: inside, at the lower right, it hid the diamonds of the lowest bars. Its labels
    say what each mark is measured on (the bars: this table's n_prompts prompts; the diamonds:
    CoAx's trained gpt2-small, 96 prompts x 4 seeds), so a small or random-weight run's bars
    beside them read as what they are. Each method's label carries its ROC-AUC: a bar at 0 has
    nothing else to show."""
    table = table.sort_values("roc_auc")
    y = np.arange(len(table))
    fig, ax = plt.subplots(figsize=(6.5, 0.35 * len(table) + 1.2))
    low = (table.roc_auc - table.roc_auc_low).clip(lower=0).fillna(0)
    high = (table.roc_auc_high - table.roc_auc).clip(lower=0).fillna(0)
    bars = "this table" + (f" ({n_prompts} prompts)" if n_prompts else "")
    ax.barh(
        y, table.roc_auc, xerr=[low, high], color="#4C72B0", ecolor="black", capsize=2, label=bars
    )
    ax.axvline(0.5, color="grey", ls="--", lw=0.8, label="chance")
    if anchors and table.coax_roc_auc.notna().any():
        ax.scatter(
            table.coax_roc_auc,
            y,
            marker="D",
            color="#C44E52",
            zorder=3,
            label="CoAx release 2.1.0 (trained gpt2-small, 96 prompts x 4 seeds, mean)",
        )
    ax.set_yticks(y, [_label(m, auc) for m, auc in zip(table.index, table.roc_auc, strict=True)])
    ax.set_xlim(0, 1.02)
    ax.set_xlabel("ROC-AUC of ranking the expected backups first")
    ax.legend(loc="lower left", bbox_to_anchor=(0, 1.0), fontsize=8, frameon=False)
    fig.tight_layout()
    return fig


def _label(method: str, roc_auc: float) -> str:
    """A method's tick label: its name and ROC-AUC ("atp  0.00"; "n/a" where undefined)."""
    value = "n/a" if np.isnan(roc_auc) else f"{roc_auc:.2f}"
    return f"{method.replace('_', ' ')}  {value}"
