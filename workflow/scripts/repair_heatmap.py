"""Beyond the paper: each component's share of each head's self-repair, or on a task's answers
(rule task_repairer_heatmap) (selfrepair.stages.repair_figures.repair_heatmap)."""

from selfrepair.stages import repair_figures
from selfrepair.stages.joblog import logged, rule_params

with logged(snakemake.log[0], snakemake):
    repair_figures.repair_heatmap(
        list(snakemake.input.summaries),
        **rule_params(snakemake, "models", "top_fraction"),
        out=[snakemake.output.pdf, snakemake.output.png],
        task=snakemake.params.get("task"),  # a task's variant only
    )
