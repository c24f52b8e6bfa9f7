"""Clean direct effects on a task's metric (selfrepair.stages.tasks.task_clean)."""

from selfrepair.stages.job import ModelJob
from selfrepair.stages.joblog import logged
from selfrepair.stages.tasks import task_clean

with logged(snakemake.log[0], snakemake):
    task_clean(
        ModelJob.from_snakemake(snakemake),
        task=snakemake.wildcards.task,
        metric=snakemake.params.metric,
        out=snakemake.output.clean,
        metric_out=snakemake.output.metric,
        attrs=dict(snakemake.params.attrs),
    )
