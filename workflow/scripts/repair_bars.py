"""Beyond the paper: the top repairers of the most self-repaired heads, or of a task's (rule
task_repair_bars) (selfrepair.stages.repair_figures.repair_bars)."""

from selfrepair.stages import repair_figures
from selfrepair.stages.joblog import logged, rule_params

with logged(snakemake.log[0], snakemake):
    repair_figures.repair_bars(
        list(snakemake.input.summaries),
        list(snakemake.input.details),
        **rule_params(
            snakemake, "models", "most_repaired", "repairers", "bootstrap", "top_fraction"
        ),
        out=[snakemake.output.pdf, snakemake.output.png],
        task=snakemake.params.get("task"),  # a task's variant only
    )
