"""Final-LN scale and residual-norm ratios of one model's configured heads under one ablation
(selfrepair.stages.mechanisms.norm_ratios)."""

from selfrepair.stages.job import ModelJob
from selfrepair.stages.joblog import logged, rule_params
from selfrepair.stages.mechanisms import norm_ratios
from selfrepair.stages.summaries import heads_with_picks

with logged(snakemake.log[0], snakemake):
    norm_ratios(
        ModelJob.from_snakemake(snakemake),
        engine_shards=list(snakemake.input.shards),
        heads=heads_with_picks(snakemake.params.heads, snakemake.input.picks),
        ablation=snakemake.wildcards.ablation,
        **rule_params(snakemake, "top_fraction", "mean_include_bos", "attrs"),
        out=snakemake.output.norms,
    )
