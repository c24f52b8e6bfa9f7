"""Per-head summary of one (model, ablation) over all shards (selfrepair.stages.ablation)."""

from selfrepair.analysis.reduce import summarize_heads
from selfrepair.stages.joblog import logged

with logged(snakemake.log[0]):
    summarize_heads(
        shards=list(snakemake.input.shards),
        top_fraction=snakemake.params.top_fraction,
        de_epsilon=snakemake.params.de_epsilon,
        out=snakemake.output.summary,
        attrs=dict(snakemake.params.attrs, ablation=snakemake.wildcards.ablation),
    )
