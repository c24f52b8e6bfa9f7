"""Beyond the paper: AtP and GradDrop against the exact effects of one (model, ablation), or of
one (model, task, ablation) (rule task_atp_summary) (selfrepair.stages.atp.atp_summary)."""

from selfrepair.stages.atp import atp_summary
from selfrepair.stages.joblog import logged, rule_params

ablation = snakemake.wildcards.get("ablation") or snakemake.wildcards.get("task_ablation")
with logged(snakemake.log[0], snakemake):
    atp_summary(
        atp_shards=list(snakemake.input.atp_shards),
        ablation_shards=list(snakemake.input.ablation_shards),
        summary=snakemake.input.summary,
        top_tokens=snakemake.input.get("top_tokens"),  # rule task_atp_summary: none
        **rule_params(snakemake, "top_k"),
        out=snakemake.output.summary,
        attrs=dict(snakemake.params.attrs, ablation=ablation),
    )
