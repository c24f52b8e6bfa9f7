"""Every head of a task under one ablation (selfrepair.stages.tasks.task_ablate)."""

from selfrepair.stages.job import ModelJob
from selfrepair.stages.joblog import logged, rule_params
from selfrepair.stages.tasks import task_ablate

with logged(snakemake.log[0], snakemake):
    task_ablate(
        ModelJob.from_snakemake(snakemake),
        task=snakemake.wildcards.task,
        **rule_params(
            snakemake, "metric", "ablation", "freeze_ln", "heads_per_pass", "mean_include_bos"
        ),
        out=snakemake.output.heads,
        sums_out=snakemake.output.sums,
        detail_out=snakemake.output.detail,
        attrs=dict(snakemake.params.attrs),
    )
