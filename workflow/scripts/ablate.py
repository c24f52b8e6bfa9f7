"""Every head of one token shard under one ablation (selfrepair.stages.ablation.ablate_shard)."""

from selfrepair.stages.ablation import ablate_shard, set_threads
from selfrepair.stages.joblog import logged

with logged(snakemake.log[0]):
    set_threads(snakemake.threads)
    ablate_shard(
        tokens=snakemake.input.tokens,
        bounds=tuple(snakemake.params.bounds),
        entry=snakemake.params.model,
        checkpoint=snakemake.input.get("model_dir"),
        device=snakemake.params.device,
        dtype=snakemake.params.dtype,
        ablation=snakemake.params.ablation,
        freeze_ln=snakemake.params.freeze_ln,
        batch_size=snakemake.params.batch_size,
        heads_per_pass=snakemake.params.heads_per_pass,
        mean_include_bos=snakemake.params.mean_include_bos,
        out=snakemake.output.heads,
        attrs=dict(snakemake.params.attrs, shard=snakemake.wildcards.shard),
    )
