"""Per-head summary of one (model, ablation) over all shards
(selfrepair.stages.summaries.summarize_heads)."""

from selfrepair.stages.joblog import logged
from selfrepair.stages.summaries import summarize_heads

p = snakemake.params
with logged(snakemake.log[0]):
    summarize_heads(
        shards=list(snakemake.input.shards),
        top_fraction=p.top_fraction,
        de_epsilon=p.de_epsilon,
        out=snakemake.output.summary,
        attrs=dict(p.attrs, ablation=snakemake.wildcards.ablation),
    )
