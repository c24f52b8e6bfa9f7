"""Per-head bootstrap intervals over tokens of one (model, ablation)
(selfrepair.stages.summaries.head_intervals)."""

from selfrepair.stages.joblog import logged
from selfrepair.stages.summaries import head_intervals

p = snakemake.params
with logged(snakemake.log[0]):
    head_intervals(
        shards=list(snakemake.input.shards),
        top_fraction=p.top_fraction,
        de_epsilon=p.de_epsilon,
        n_resamples=p.resamples,
        level=p.level,
        seed=p.seed,
        out=snakemake.output.intervals,
        attrs=dict(p.attrs, ablation=snakemake.wildcards.ablation),
    )
