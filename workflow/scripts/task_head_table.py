"""A task's per-head table, every ablation, as CSV and HTML
(selfrepair.stages.task_summaries.task_head_table)."""

from selfrepair.stages.joblog import logged
from selfrepair.stages.task_summaries import task_head_table

with logged(snakemake.log[0], snakemake):
    task_head_table(
        model=snakemake.wildcards.model,
        task=snakemake.wildcards.task,
        ablations=list(snakemake.params.ablations),
        summaries=list(snakemake.input.summaries),
        intervals=list(snakemake.input.intervals),
        csv=snakemake.output.csv,
        html_path=snakemake.output.html,
        note=snakemake.params.caption.replace("**", ""),
    )
