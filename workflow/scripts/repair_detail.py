"""Every component's change of direct effect on the top tokens of a few heads
(selfrepair.stages.repair.repair_detail)."""

from selfrepair.stages.job import ModelJob
from selfrepair.stages.joblog import logged, rule_params
from selfrepair.stages.repair import detail_heads, repair_detail

with logged(snakemake.log[0], snakemake):
    repair_detail(
        ModelJob.from_snakemake(snakemake),
        heads=detail_heads(
            snakemake.params.heads,
            snakemake.input.picks,
            snakemake.input.summary,
            snakemake.params.most_repaired,
        ),
        **rule_params(
            snakemake, "ablation", "freeze_ln", "heads_per_pass", "mean_include_bos", "attrs"
        ),
        top_tokens=snakemake.input.top_tokens,
        out=snakemake.output.detail,
    )
