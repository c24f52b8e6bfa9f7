"""Per-head summary and bootstrap intervals of one (model, ablation) over all shards, or of one
(model, task, ablation) over its answers with its repair summary (rule task_summary)
(selfrepair.stages.summaries.summarize_heads)."""

from selfrepair.stages.joblog import logged, rule_params
from selfrepair.stages.summaries import summarize_heads

ablation = snakemake.wildcards.get("ablation") or snakemake.wildcards.get("task_ablation")
with logged(snakemake.log[0], snakemake):
    summarize_heads(
        shards=list(snakemake.input.shards),
        top_tokens=snakemake.input.get("top_tokens"),  # rule task_summary: none
        **rule_params(snakemake, "top_fraction", "de_epsilon", "level", "seed"),
        n_resamples=snakemake.params.resamples,
        out=snakemake.output.summary,
        intervals_out=snakemake.output.intervals,
        attrs=dict(snakemake.params.attrs, ablation=ablation),
        sums=snakemake.input.get("sums"),
        repairs_out=snakemake.output.get("repairs"),
    )
