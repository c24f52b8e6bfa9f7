"""Per-head summary table of every model and ablation, or of a task's every ablation (rule
task_head_table), as CSV and HTML (selfrepair.stages.summaries.head_table)."""

from selfrepair.stages.joblog import logged
from selfrepair.stages.summaries import head_table

with logged(snakemake.log[0], snakemake):
    head_table(
        keys=snakemake.params.runs,
        summaries=list(snakemake.input.summaries),
        intervals=list(snakemake.input.intervals),
        csv=snakemake.output.csv,
        html_path=snakemake.output.html,
        note=snakemake.params.caption.replace("**", ""),
        task=snakemake.wildcards.get("task"),
    )
