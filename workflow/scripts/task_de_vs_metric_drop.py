"""Fig 2 on a task (selfrepair.stages.task_figures.task_de_vs_metric_drop)."""

from selfrepair.stages.joblog import logged
from selfrepair.stages.task_figures import task_de_vs_metric_drop

with logged(snakemake.log[0], snakemake):
    task_de_vs_metric_drop(
        snakemake.input.summary,
        snakemake.input.metric,
        snakemake.wildcards.model,
        snakemake.wildcards.task,
        snakemake.params.ablation,
        out=[snakemake.output.pdf, snakemake.output.png],
    )
