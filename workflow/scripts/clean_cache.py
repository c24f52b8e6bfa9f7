"""Clean direct effects of one token shard (selfrepair.stages.ablation.clean_shard)."""

from selfrepair.stages.ablation import clean_shard, set_threads
from selfrepair.stages.joblog import logged

with logged(snakemake.log[0]):
    set_threads(snakemake.threads)
    clean_shard(
        tokens=snakemake.input.tokens,
        bounds=tuple(snakemake.params.bounds),
        entry=snakemake.params.model,
        checkpoint=snakemake.input.get("model_dir"),
        device=snakemake.params.device,
        dtype=snakemake.params.dtype,
        batch_size=snakemake.params.batch_size,
        out=snakemake.output.clean,
        attrs=dict(snakemake.params.attrs, shard=snakemake.wildcards.shard),
    )
