"""A task's clean metric as JSON, from its clean store (selfrepair.stages.clean.task_metric)."""

from selfrepair.stages.clean import task_metric
from selfrepair.stages.joblog import logged

with logged(snakemake.log[0], snakemake):
    task_metric(snakemake.input.clean, out=snakemake.output.metric)
