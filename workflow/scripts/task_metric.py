"""A task's clean metric as JSON, from its clean store
(selfrepair.stages.task_summaries.task_metric)."""

from selfrepair.stages.joblog import logged
from selfrepair.stages.task_summaries import task_metric

with logged(snakemake.log[0], snakemake):
    task_metric(snakemake.input.clean, out=snakemake.output.metric)
