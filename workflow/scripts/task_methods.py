"""Every method's per-answer values for one named set of a task
(selfrepair.stages.methods.task_methods)."""

from selfrepair.stages.job import ModelJob
from selfrepair.stages.joblog import logged, rule_params
from selfrepair.stages.methods import task_methods

with logged(snakemake.log[0], snakemake):
    task_methods(
        ModelJob.from_snakemake(snakemake),
        task=snakemake.wildcards.task,
        members=snakemake.params.members,
        **rule_params(snakemake, "metric", "ablation", "steps", "mean_include_bos"),
        out=snakemake.output.methods,
        attrs=dict(snakemake.params.attrs),
        metric_json=snakemake.input.get("metric"),
        clean_store=snakemake.input.get("clean"),
    )
