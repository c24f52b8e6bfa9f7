"""Beyond the paper: AtP and GradDrop of every head on one token shard, or on a task's prompts
(rule task_atp), under each of the config's ablations from one job (selfrepair.stages.atp.atp)."""

from selfrepair.stages.atp import atp
from selfrepair.stages.job import ModelJob
from selfrepair.stages.joblog import logged, rule_params

with logged(snakemake.log[0], snakemake):
    # rule task_atp (a task: its prompts, no top_tokens store, no shard) runs this script too
    shard = {"shard": snakemake.wildcards.shard} if "shard" in snakemake.wildcards.keys() else {}
    atp(
        ModelJob.from_snakemake(snakemake),
        **rule_params(snakemake, "ablations", "mean_include_bos", "top_graddrop"),
        top_tokens=snakemake.input.get("top_tokens"),
        task=snakemake.params.get("task"),
        metric=snakemake.params.get("metric"),
        out=snakemake.output.atp,
        attrs=dict(snakemake.params.attrs, **shard),
    )
