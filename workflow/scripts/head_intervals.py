"""Per-head bootstrap intervals over tokens of one (model, ablation) (selfrepair.analysis.intervals)."""

from selfrepair.analysis.intervals import intervals_stage
from selfrepair.stages.joblog import logged

with logged(snakemake.log[0]):
    intervals_stage(
        shards=list(snakemake.input.shards),
        top_fraction=snakemake.params.top_fraction,
        de_epsilon=snakemake.params.de_epsilon,
        n_resamples=snakemake.params.resamples,
        level=snakemake.params.level,
        seed=snakemake.params.seed,
        out=snakemake.output.intervals,
        attrs=dict(snakemake.params.attrs, ablation=snakemake.wildcards.ablation),
    )
