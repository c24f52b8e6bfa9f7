"""Beyond the paper: AtP and GradDrop of every head on one token shard under one ablation
(selfrepair.stages.atp.atp)."""

from selfrepair.stages.atp import atp
from selfrepair.stages.job import ModelJob
from selfrepair.stages.joblog import logged, rule_params

with logged(snakemake.log[0], snakemake):
    atp(
        ModelJob.from_snakemake(snakemake),
        **rule_params(snakemake, "ablation", "mean_include_bos", "top_graddrop"),
        top_tokens=snakemake.input.top_tokens,
        out=snakemake.output.atp,
        attrs=dict(snakemake.params.attrs, shard=snakemake.wildcards.shard),
    )
