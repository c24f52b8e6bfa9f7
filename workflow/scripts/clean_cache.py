"""Clean direct effects of one token shard (selfrepair.stages.clean.clean_cache)."""

from selfrepair.stages.clean import clean_cache
from selfrepair.stages.job import ModelJob
from selfrepair.stages.joblog import logged

with logged(snakemake.log[0], snakemake):
    attrs = dict(snakemake.params.attrs, shard=snakemake.wildcards.shard)
    clean_cache(
        ModelJob.from_snakemake(snakemake),
        out=snakemake.output.clean,
        attrs=attrs,
        top_k=snakemake.params.top_k,
    )
