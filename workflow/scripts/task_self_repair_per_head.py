"""Fig 1 on a task (selfrepair.stages.task_figures.task_self_repair_per_head)."""

from selfrepair.stages.joblog import logged
from selfrepair.stages.task_figures import task_self_repair_per_head

with logged(snakemake.log[0], snakemake):
    task_self_repair_per_head(
        snakemake.input.summary,
        snakemake.input.intervals,
        snakemake.input.metric,
        snakemake.wildcards.model,
        snakemake.wildcards.task,
        snakemake.params.ablation,
        out=[snakemake.output.pdf, snakemake.output.png],
    )
