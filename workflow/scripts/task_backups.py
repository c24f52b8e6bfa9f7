"""A task's backup-heads table (selfrepair.stages.task_summaries.task_backups)."""

from selfrepair.stages.joblog import logged
from selfrepair.stages.task_summaries import task_backups

params = snakemake.params
with logged(snakemake.log[0], snakemake):
    task_backups(
        summary=snakemake.input.summary,
        repairs=snakemake.input.repairs,
        sets=list(snakemake.input.sets),
        expected=params.expected,
        metric=snakemake.input.metric,
        roles=dict(params.roles),
        n_heads=int(params.n_heads),
        n_backups=int(params.n_backups),
        csv=snakemake.output.csv,
        html_path=snakemake.output.html,
        title=f"Backup heads: {snakemake.wildcards.model} on {snakemake.wildcards.task}",
        note=params.caption.replace("**", ""),
        bootstrap=dict(params.bootstrap),
    )
