"""The one list of the workflow's figures: which rule draws each, what kind of figure it is (so a
run makes it or not), which config key names its model and heads and which stores it reads. The
list of final outputs (workflow/rules/common.smk) and the tests read it. No heavy imports: the
Snakefile uses it.

Each figure's files, report entry, log, benchmark and script are written in its rule
(workflow/rules/figures.smk, attribution.smk, training.smk), so grepping a figure's file name
finds its rule. Add a figure here (and its rule, script, stage function and caption) and it
joins the run's outputs, the report and the tests' checks.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

__all__ = [
    "FIGURES",
    "TRAINING_FIGURES",
    "Figure",
    "by_rule",
    "run_figures",
]

Kind = Literal["paper", "mechanism", "extra", "repair", "training"]


@dataclass(frozen=True)
class Figure:
    """One figure rule.

    Attributes:
        rule: the Snakemake rule, and the function of selfrepair.stages it calls; its output
            paths are written in the rule.
        reads: the kinds of store it reads (results/<model>/<kind>/...).
        kind: "paper" (rules/figures.smk, the paper's per-head figures), "mechanism" (the
            paper's mechanism sections, drawn from rules/mechanisms.smk's stores) or "extra"
            (beyond the paper: made only when engine.frozen_ln runs a frozen-LayerNorm variant)
            or "repair" (beyond the paper, rules/attribution.smk: who repairs whom, made when
            engine.attribution is on) or "training" (beyond the paper, rules/training.smk:
            self-repair over training, made when a model has training checkpoints).
        target: the config key naming its model and heads (figures.<key> for paper figures,
            mechanisms.<experiment>.<key> for mechanism ones), or None when it shows every model.
    """

    rule: str
    reads: tuple[str, ...]
    kind: Kind
    target: str | None = None


# In the order of the run's final outputs (rule all): the paper's per-head figures, then the
# mechanism figures.
FIGURES = (
    Figure(
        rule="fig01",
        reads=("summary", "intervals"),
        kind="paper",
    ),
    Figure(
        rule="fig02",
        reads=("summary",),
        kind="paper",
        target="figures.fig02",
    ),
    Figure(
        rule="fig03",
        reads=("ablation",),
        kind="paper",
        target="figures.fig03",
    ),
    Figure(
        rule="fig05",
        reads=("ablation",),
        kind="paper",
        target="figures.fig05",
    ),
    Figure(
        rule="fig06",
        reads=("summary", "intervals"),
        kind="paper",
    ),
    Figure(
        rule="fig11",
        reads=("summary", "intervals"),
        kind="paper",
    ),
    Figure(
        rule="fig21_24",
        reads=("summary",),
        kind="paper",
    ),
    Figure(
        rule="extra_frozen_ln",
        reads=("summary",),
        kind="extra",
    ),
    Figure(
        rule="repair_heatmap",
        reads=("attribution",),
        kind="repair",
    ),
    Figure(
        rule="repair_bars",
        reads=("attribution",),
        kind="repair",
    ),
    Figure(
        rule="repair_scatter",
        reads=("attribution",),
        kind="repair",
    ),
    Figure(
        rule="training_self_repair",
        reads=("clean", "ablation"),
        kind="training",
    ),
    Figure(
        rule="fig04",
        reads=("norms",),
        kind="mechanism",
        target="mechanisms.norms.fig04",
    ),
    Figure(
        rule="fig07",
        reads=("neurons",),
        kind="mechanism",
        target="mechanisms.neurons.fig07",
    ),
    Figure(
        rule="fig08",
        reads=("neurons",),
        kind="mechanism",
        target="mechanisms.neurons.fig08",
    ),
    Figure(
        rule="fig09",
        reads=("reinforcement",),
        kind="mechanism",
        target="mechanisms.reinforcement.fig09",
    ),
    Figure(
        rule="fig15",
        reads=("neurons",),
        kind="mechanism",
        target="mechanisms.neurons.fig15",
    ),
    Figure(
        rule="fig16_18",
        reads=("norms",),
        kind="mechanism",
        target="mechanisms.norms.fig16_18",
    ),
    Figure(
        rule="fig19",
        reads=("reinforcement",),
        kind="mechanism",
        target="mechanisms.reinforcement.fig09",
    ),
)

_BY_RULE = {figure.rule: figure for figure in FIGURES}


def by_rule(rule: str) -> Figure:
    """The figure a rule makes.

    Args:
        rule: a figure rule's name (fig01, fig21_24, extra_frozen_ln, ...).
    """
    return _BY_RULE[rule]


def run_figures(
    frozen_ln: bool,
    kinds: tuple[Kind, ...] | None = None,
    attribution: bool = True,
    training: bool = True,
) -> list[Figure]:
    """The figures a run makes, in output order.

    Args:
        frozen_ln: whether the run has a frozen-LayerNorm variant (engine.frozen_ln), which
            the extra figure needs.
        kinds: only the figures of these kinds ("paper", "mechanism", "extra", "repair");
            None: all.
        attribution: whether the run measures who repairs whom (engine.attribution), which
            the repair figures need.
        training: whether a model of the run has training checkpoints, which the training
            figure needs.
    """
    made = {"extra": frozen_ln, "repair": attribution, "training": training}
    return [f for f in FIGURES if made.get(f.kind, True) and (kinds is None or f.kind in kinds)]


# The figures of runs with training checkpoints (models[].revisions, .checkpoints,
# .train.keep_steps; selfrepair.config.checkpoints): a run without them (the paper's) makes none.
TRAINING_FIGURES = tuple(f for f in FIGURES if f.kind == "training")
