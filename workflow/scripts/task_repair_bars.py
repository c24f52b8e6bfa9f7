"""A task's most self-repaired heads' top repairers
(selfrepair.stages.task_figures.task_repair_bars)."""

from selfrepair.stages.joblog import logged, rule_params
from selfrepair.stages.task_figures import task_repair_bars

with logged(snakemake.log[0], snakemake):
    task_repair_bars(
        snakemake.input.repairs,
        snakemake.input.detail,
        snakemake.input.metric,
        snakemake.wildcards.model,
        snakemake.wildcards.task,
        **rule_params(snakemake, "ablation", "most_repaired", "repairers", "bootstrap"),
        out=[snakemake.output.pdf, snakemake.output.png],
    )
