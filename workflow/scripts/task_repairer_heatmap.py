"""Who repairs whom on a task (selfrepair.stages.task_figures.task_repairer_heatmap)."""

from selfrepair.stages.joblog import logged
from selfrepair.stages.task_figures import task_repairer_heatmap

with logged(snakemake.log[0], snakemake):
    task_repairer_heatmap(
        snakemake.input.repairs,
        snakemake.input.metric,
        snakemake.wildcards.model,
        snakemake.wildcards.task,
        snakemake.params.ablation,
        out=[snakemake.output.pdf, snakemake.output.png],
    )
