"""Each named set of heads ablated jointly on a task's prompts (rule task_set_ablate) or on a
token shard of running text (rule set_ablate) (selfrepair.stages.tasks.task_set_ablate)."""

from selfrepair.stages.job import ModelJob
from selfrepair.stages.joblog import logged, rule_params
from selfrepair.stages.tasks import task_set_ablate

with logged(snakemake.log[0], snakemake):
    task_set_ablate(
        ModelJob.from_snakemake(snakemake),
        task=snakemake.wildcards.get("task"),
        sets=dict(snakemake.params.sets),
        **rule_params(snakemake, "metric", "ablation", "mean_include_bos"),
        out=snakemake.output.sets,
        attrs=dict(snakemake.params.attrs),
        metric_json=snakemake.input.get("metric"),
        clean_store=snakemake.input.get("clean"),
    )
