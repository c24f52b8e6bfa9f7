"""Clean direct effects of one dataset's shard: a token shard or a task's prompts
(selfrepair.stages.clean.clean_cache)."""

from selfrepair.stages.clean import clean_cache
from selfrepair.stages.job import ModelJob
from selfrepair.stages.joblog import logged, rule_params

with logged(snakemake.log[0], snakemake):
    clean_cache(
        ModelJob.from_snakemake(snakemake),
        **rule_params(snakemake, "top_k", "task", "metric"),
        out=snakemake.output.clean,
        attrs=dict(snakemake.params.attrs),
    )
