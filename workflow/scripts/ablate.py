"""Every head of one token shard under one ablation (selfrepair.stages.ablation.ablate)."""

from selfrepair.stages.ablation import ablate
from selfrepair.stages.job import ModelJob
from selfrepair.stages.joblog import logged, rule_params

with logged(snakemake.log[0], snakemake):
    ablate(
        ModelJob.from_snakemake(snakemake),
        **rule_params(snakemake, "ablation", "freeze_ln", "heads_per_pass", "mean_include_bos"),
        out=snakemake.output.heads,
        top_tokens=snakemake.input.get("top_tokens"),
        attribution_out=snakemake.output.get("attribution"),
        keep=snakemake.params.keep,
        picks=list(snakemake.input.picks),
        attrs=dict(snakemake.params.attrs, shard=snakemake.wildcards.shard),
    )
