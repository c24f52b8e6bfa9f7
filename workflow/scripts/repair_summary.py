"""Who repairs whom in one (model, ablation), over all shards
(selfrepair.stages.repair.repair_summary)."""

from selfrepair.stages.joblog import logged
from selfrepair.stages.repair import repair_summary

with logged(snakemake.log[0], snakemake):
    repair_summary(
        shards=list(snakemake.input.shards),
        top_tokens=snakemake.input.top_tokens,
        out=snakemake.output.summary,
        attrs=dict(snakemake.params.attrs, ablation=snakemake.wildcards.ablation),
    )
