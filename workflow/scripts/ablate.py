"""Every head of one token shard, or of a task's prompts (rule task_ablate), under one ablation
(selfrepair.stages.ablation.ablate)."""

from selfrepair.stages.ablation import ablate
from selfrepair.stages.job import ModelJob
from selfrepair.stages.joblog import logged, rule_params

with logged(snakemake.log[0], snakemake):
    ablate(
        ModelJob.from_snakemake(snakemake),
        **rule_params(
            snakemake,
            *("ablation", "freeze_ln", "heads_per_pass", "mean_include_bos", "keep"),
            *("task", "metric"),
        ),
        out=snakemake.output.heads,
        top_tokens=snakemake.input.get("top_tokens"),
        attribution_out=snakemake.output.get("attribution"),
        detail_out=snakemake.output.get("detail"),
        picks=list(snakemake.input.get("picks", [])),
        attrs=dict(snakemake.params.attrs),
    )
