"""Per-head bootstrap intervals over tokens of one (model, ablation)
(selfrepair.stages.summaries.head_intervals)."""

from selfrepair.stages.joblog import logged, rule_params
from selfrepair.stages.summaries import head_intervals

with logged(snakemake.log[0]):
    head_intervals(
        shards=list(snakemake.input.shards),
        **rule_params(snakemake, "top_fraction", "de_epsilon", "level", "seed"),
        n_resamples=snakemake.params.resamples,
        out=snakemake.output.intervals,
        attrs=dict(snakemake.params.attrs, ablation=snakemake.wildcards.ablation),
    )
