"""Per-head summary of one (model, ablation) over all shards (selfrepair.pipeline)."""

from selfrepair.joblog import logged
from selfrepair.reduce import summarize_heads

with logged(snakemake.log[0]):
    summarize_heads(
        shards=list(snakemake.input.shards),
        top_fraction=snakemake.params.top_fraction,
        de_epsilon=snakemake.params.de_epsilon,
        out=snakemake.output.summary,
        attrs=dict(snakemake.params.attrs, ablation=snakemake.wildcards.ablation),
    )
