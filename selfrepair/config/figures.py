"""The one list of the workflow's figures and tables: the figure rules (workflow/rules/figures.smk),
the list of final outputs (workflow/rules/common.smk) and the tests all read it. No heavy
imports: the Snakefile uses it.

Add a figure here (and its rule, script, stage function and caption) and it joins the run's
outputs, the report and the tests' checks.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

__all__ = [
    "FIGURES",
    "TABLES",
    "Figure",
    "by_rule",
    "figure_names",
    "run_figures",
]

Kind = Literal["paper", "mechanism", "extra"]


@dataclass(frozen=True)
class Figure:
    """One figure rule and what it makes.

    Attributes:
        rule: the Snakemake rule, and the function of selfrepair.stages.figures it calls.
        name: the file stem: results/figures/<name>.pdf and .png.
        tag: the stem of its report caption (workflow/report/<tag>.rst), log
            (results/logs/figures/<tag>.log) and benchmark (results/benchmarks/figures/<tag>.tsv).
        script: its script under workflow/scripts/ (rules made `with:` another share its script).
        category: its report category.
        reads: the kinds of store it reads (results/<model>/<kind>/...).
        kind: "paper" (rules/figures.smk, the paper's per-head figures), "mechanism" (the
            paper's mechanism sections, drawn from rules/mechanisms.smk's stores) or "extra"
            (beyond the paper: made only when engine.frozen_ln runs a frozen-LayerNorm variant).
        target: the config key naming its model and heads (figures.<key> for paper figures,
            mechanisms.<experiment>.<key> for mechanism ones), or None when it shows every model.
    """

    rule: str
    name: str
    tag: str
    script: str
    category: str
    reads: tuple[str, ...]
    kind: Kind
    target: str | None = None

    @property
    def files(self) -> dict[str, str]:
        """The figure's files by format: results/figures/<name>.pdf and .png."""
        return {fmt: f"results/figures/{self.name}.{fmt}" for fmt in ("pdf", "png")}


# In the order of the run's final outputs (rule all): the paper's per-head figures, then the
# mechanism figures.
FIGURES = (
    Figure(
        "fig01",
        "fig01_self_repair_per_head",
        "fig01",
        "fig01_self_repair_per_head.py",
        "Fig 01: self-repair per head",
        ("summary", "intervals"),
        "paper",
    ),
    Figure(
        "fig02",
        "fig02_de_vs_logit_drop",
        "fig02",
        "fig02_de_vs_logit_drop.py",
        "Fig 02: direct effect vs logit drop",
        ("summary",),
        "paper",
        "fig02",
    ),
    Figure(
        "fig03",
        "fig03_tokens_de_vs_logit_drop",
        "fig03",
        "fig03_tokens_de_vs_logit_drop.py",
        "Fig 03: per-token direct effect vs logit drop",
        ("ablation",),
        "paper",
        "fig03",
    ),
    Figure(
        "fig05",
        "fig05_tokens_by_ablation",
        "fig05",
        "fig05_tokens_by_ablation.py",
        "Fig 05: one head under each ablation",
        ("ablation",),
        "paper",
        "fig05",
    ),
    Figure(
        "fig06",
        "fig06_ln_share",
        "fig06",
        "fig06_ln_share.py",
        "Fig 06: LayerNorm share of direct effect",
        ("summary", "intervals"),
        "paper",
    ),
    Figure(
        "fig11",
        "fig11_ln_share_unclipped",
        "fig11",
        "fig06_ln_share.py",
        "Fig 11: LayerNorm share, clipped and unclipped",
        ("summary", "intervals"),
        "paper",
    ),
    Figure(
        "fig21_24",
        "fig21-24_de_vs_logit_drop_other_models",
        "fig21-24",
        "fig02_de_vs_logit_drop.py",
        "Fig 21-24: direct effect vs logit drop, other models",
        ("summary",),
        "paper",
    ),
    Figure(
        "extra_frozen_ln",
        "extra_frozen_ln",
        "extra_frozen_ln",
        "extra_frozen_ln.py",
        "Beyond the paper: frozen LayerNorm",
        ("summary",),
        "extra",
    ),
    Figure(
        "fig04",
        "fig04_ln_scale_ratio",
        "fig04",
        "fig04_ln_scale_ratio.py",
        "Fig 04: final LayerNorm scale ratio",
        ("norms",),
        "mechanism",
        "norms.fig04",
    ),
    Figure(
        "fig07",
        "fig07_top_repairing_neuron",
        "fig07",
        "fig07_top_repairing_neuron.py",
        "Fig 07: top self-repairing neuron",
        ("neurons",),
        "mechanism",
        "neurons.fig07",
    ),
    Figure(
        "fig08",
        "fig08_neuron_repair_thresholds",
        "fig08",
        "fig08_neuron_repair_thresholds.py",
        "Fig 08: neuron repair thresholds",
        ("neurons",),
        "mechanism",
        "neurons.fig08",
    ),
    Figure(
        "fig09",
        "fig09_self_repression",
        "fig09",
        "fig09_19_self_repression.py",
        "Fig 09: self-repression",
        ("reinforcement",),
        "mechanism",
        "reinforcement.fig09",
    ),
    Figure(
        "fig15",
        "fig15_neuron_cumulative_share",
        "fig15",
        "fig15_neuron_cumulative_share.py",
        "Fig 15: cumulative neuron self-repair",
        ("neurons",),
        "mechanism",
        "neurons.fig15",
    ),
    Figure(
        "fig16_18",
        "fig16-18_resid_norm_ratio",
        "fig16_18",
        "fig16_18_resid_norm_ratio.py",
        "Figs 16-18: residual norm ratio",
        ("norms",),
        "mechanism",
        "norms.fig16_18",
    ),
    Figure(
        "fig19",
        "fig19_self_repression_scales",
        "fig19",
        "fig09_19_self_repression.py",
        "Fig 19: self-repression by scale",
        ("reinforcement",),
        "mechanism",
        "reinforcement.fig09",
    ),
)

# The per-head summary table of every model and ablation (rule head_table,
# rules/summaries.smk): results/tables/<file>.
TABLES = ("head_summary.csv", "head_summary.html")

_BY_RULE = {figure.rule: figure for figure in FIGURES}


def by_rule(rule: str) -> Figure:
    """The figure a rule makes.

    Args:
        rule: a figure rule's name (fig01, fig21_24, extra_frozen_ln, ...).
    """
    return _BY_RULE[rule]


def run_figures(frozen_ln: bool, kinds: tuple[Kind, ...] | None = None) -> list[Figure]:
    """The figures a run makes, in output order.

    Args:
        frozen_ln: whether the run has a frozen-LayerNorm variant (engine.frozen_ln), which
            the extra figure needs.
        kinds: only the figures of these kinds ("paper", "mechanism", "extra"); None: all.
    """
    return [
        f
        for f in FIGURES
        if (frozen_ln or f.kind != "extra") and (kinds is None or f.kind in kinds)
    ]


def figure_names(frozen_ln: bool = True) -> set[str]:
    """The file stems of the figures a run makes (results/figures/<stem>.pdf and .png).

    Args:
        frozen_ln: whether the run has a frozen-LayerNorm variant (the default, as the demo and
            the paper's config have).
    """
    return {f.name for f in run_figures(frozen_ln)}
