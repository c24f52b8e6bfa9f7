"""Every head of one token shard under each of the run's ablation variants (rule ablate), of a
training checkpoint's shard or a task's prompts under one (rules checkpoint_ablate, task_ablate)
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
        # per kind (rule ablate: a list per variant; the others: their kind's)
        picks=snakemake.params.get("picks"),
        attrs=dict(snakemake.params.attrs),
    )
