"""Per-head summary and bootstrap intervals of one (model, ablation) over all shards
(selfrepair.stages.summaries.summarize_heads)."""

from selfrepair.stages.joblog import logged, rule_params
from selfrepair.stages.summaries import summarize_heads

with logged(snakemake.log[0], snakemake):
    summarize_heads(
        shards=list(snakemake.input.shards),
        top_tokens=snakemake.input.top_tokens,
        **rule_params(snakemake, "top_fraction", "de_epsilon", "level", "seed"),
        n_resamples=snakemake.params.resamples,
        out=snakemake.output.summary,
        intervals_out=snakemake.output.intervals,
        attrs=dict(snakemake.params.attrs, ablation=snakemake.wildcards.ablation),
    )
