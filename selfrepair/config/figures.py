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
    "REPAIR_TABLES",
    "TASK_FIGURES",
    "TRAINING_FIGURES",
    "TABLES",
    "Figure",
    "by_rule",
    "figure_names",
    "run_figures",
]

Kind = Literal["paper", "mechanism", "extra", "repair", "training"]


@dataclass(frozen=True)
class Figure:
    """One figure rule and what it makes.

    Attributes:
        rule: the Snakemake rule, and the function of selfrepair.stages.figures it calls.
        name: the file stem: results/figures/<name>.pdf and .png.
        tag: the stem of its report caption (workflow/report/<tag>.rst), log
            (results/logs/figures/<tag>.log) and benchmark (results/benchmarks/figures/<tag>.tsv);
            the rule's name unless given.
        script: its script under workflow/scripts/ (rules made `with:` another share its script).
        category: its report category.
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
    name: str
    script: str
    category: str
    reads: tuple[str, ...]
    kind: Kind
    target: str | None = None
    tag: str = ""

    def __post_init__(self) -> None:
        if not self.tag:
            object.__setattr__(self, "tag", self.rule)  # frozen: set once, here

    @property
    def files(self) -> dict[str, str]:
        """The figure's files by format: results/figures/<name>.pdf and .png."""
        return {fmt: f"results/figures/{self.name}.{fmt}" for fmt in ("pdf", "png")}


# In the order of the run's final outputs (rule all): the paper's per-head figures, then the
# mechanism figures.
FIGURES = (
    Figure(
        rule="fig01",
        name="fig01_self_repair_per_head",
        script="fig01_self_repair_per_head.py",
        category="Fig 01: self-repair per head",
        reads=("summary", "intervals"),
        kind="paper",
    ),
    Figure(
        rule="fig02",
        name="fig02_de_vs_logit_drop",
        script="fig02_de_vs_logit_drop.py",
        category="Fig 02: direct effect vs logit drop",
        reads=("summary",),
        kind="paper",
        target="figures.fig02",
    ),
    Figure(
        rule="fig03",
        name="fig03_tokens_de_vs_logit_drop",
        script="fig03_tokens_de_vs_logit_drop.py",
        category="Fig 03: per-token direct effect vs logit drop",
        reads=("ablation",),
        kind="paper",
        target="figures.fig03",
    ),
    Figure(
        rule="fig05",
        name="fig05_tokens_by_ablation",
        script="fig05_tokens_by_ablation.py",
        category="Fig 05: one head under each ablation",
        reads=("ablation",),
        kind="paper",
        target="figures.fig05",
    ),
    Figure(
        rule="fig06",
        name="fig06_ln_share",
        script="fig06_ln_share.py",
        category="Fig 06: LayerNorm share of direct effect",
        reads=("summary", "intervals"),
        kind="paper",
    ),
    Figure(
        rule="fig11",
        name="fig11_ln_share_unclipped",
        script="fig06_ln_share.py",
        category="Fig 11: LayerNorm share, clipped and unclipped",
        reads=("summary", "intervals"),
        kind="paper",
    ),
    Figure(
        rule="fig21_24",
        name="fig21-24_de_vs_logit_drop_other_models",
        tag="fig21-24",
        script="fig02_de_vs_logit_drop.py",
        category="Fig 21-24: direct effect vs logit drop, other models",
        reads=("summary",),
        kind="paper",
    ),
    Figure(
        rule="extra_frozen_ln",
        name="extra_frozen_ln",
        script="extra_frozen_ln.py",
        category="Beyond the paper: frozen LayerNorm",
        reads=("summary",),
        kind="extra",
    ),
    Figure(
        rule="repair_heatmap",
        name="repair_heatmap",
        script="repair_heatmap.py",
        category="Beyond the paper: who repairs whom",
        reads=("attribution",),
        kind="repair",
    ),
    Figure(
        rule="repair_bars",
        name="repair_top_repairers",
        script="repair_bars.py",
        category="Beyond the paper: who repairs whom",
        reads=("attribution",),
        kind="repair",
    ),
    Figure(
        rule="repair_scatter",
        name="repair_tokens",
        script="repair_scatter.py",
        category="Beyond the paper: who repairs whom",
        reads=("attribution",),
        kind="repair",
    ),
    Figure(
        rule="training_self_repair",
        name="training_self_repair",
        script="training_self_repair.py",
        category="Beyond the paper: self-repair over training",
        reads=("clean", "ablation"),
        kind="training",
    ),
    Figure(
        rule="fig04",
        name="fig04_ln_scale_ratio",
        script="fig04_ln_scale_ratio.py",
        category="Fig 04: final LayerNorm scale ratio",
        reads=("norms",),
        kind="mechanism",
        target="mechanisms.norms.fig04",
    ),
    Figure(
        rule="fig07",
        name="fig07_top_repairing_neuron",
        script="fig07_top_repairing_neuron.py",
        category="Fig 07: top self-repairing neuron",
        reads=("neurons",),
        kind="mechanism",
        target="mechanisms.neurons.fig07",
    ),
    Figure(
        rule="fig08",
        name="fig08_neuron_repair_thresholds",
        script="fig08_neuron_repair_thresholds.py",
        category="Fig 08: neuron repair thresholds",
        reads=("neurons",),
        kind="mechanism",
        target="mechanisms.neurons.fig08",
    ),
    Figure(
        rule="fig09",
        name="fig09_self_repression",
        script="fig09_19_self_repression.py",
        category="Fig 09: self-repression",
        reads=("reinforcement",),
        kind="mechanism",
        target="mechanisms.reinforcement.fig09",
    ),
    Figure(
        rule="fig15",
        name="fig15_neuron_cumulative_share",
        script="fig15_neuron_cumulative_share.py",
        category="Fig 15: cumulative neuron self-repair",
        reads=("neurons",),
        kind="mechanism",
        target="mechanisms.neurons.fig15",
    ),
    Figure(
        rule="fig16_18",
        name="fig16-18_resid_norm_ratio",
        script="fig16_18_resid_norm_ratio.py",
        category="Figs 16-18: residual norm ratio",
        reads=("norms",),
        kind="mechanism",
        target="mechanisms.norms.fig16_18",
    ),
    Figure(
        rule="fig19",
        name="fig19_self_repression_scales",
        script="fig09_19_self_repression.py",
        category="Fig 19: self-repression by scale",
        reads=("reinforcement",),
        kind="mechanism",
        target="mechanisms.reinforcement.fig09",
    ),
)

# The per-head summary table of every model and ablation (rule head_table,
# rules/summaries.smk): results/tables/<file>.
TABLES = ("head_summary.csv", "head_summary.html")
# The repair graph (rule repair_graph, rules/attribution.smk), when engine.attribution is on.
REPAIR_TABLES = ("repair_graph.csv", "repair_graph.html")

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


def figure_names(
    frozen_ln: bool = True, attribution: bool = True, training: bool = True
) -> set[str]:
    """The file stems of the figures a run makes (results/figures/<stem>.pdf and .png).

    Args:
        frozen_ln: whether the run has a frozen-LayerNorm variant (the default, as the demo and
            the paper's config have).
        attribution: whether it measures who repairs whom (the default).
        training: whether it has training checkpoints (the demo's default).
    """
    return {f.name for f in run_figures(frozen_ln, attribution=attribution, training=training)}


# The figures of runs with training checkpoints (models[].revisions, .checkpoints,
# .train.keep_steps; selfrepair.config.checkpoints): a run without them (the paper's) makes none.
TRAINING_FIGURES = tuple(f for f in FIGURES if f.kind == "training")


# The figures of each (model, task) of the config's `tasks` (rules/tasks.smk):
# results/{model}/tasks/{task}/figures/<stem>.pdf and .png, each made by the rule of its stem.
TASK_FIGURES = (
    "task_self_repair_per_head",
    "task_de_vs_metric_drop",
    "task_repair_heatmap",
    "task_repair_bars",
)
