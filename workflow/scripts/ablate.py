"""Every head of one token shard under one ablation (selfrepair.stages.ablation.ablate)."""

from selfrepair.stages.ablation import ablate
from selfrepair.stages.job import ModelJob
from selfrepair.stages.joblog import logged

p = snakemake.params
with logged(snakemake.log[0]):
    ablate(
        ModelJob.from_snakemake(snakemake),
        ablation=p.ablation,
        freeze_ln=p.freeze_ln,
        heads_per_pass=p.heads_per_pass,
        mean_include_bos=p.mean_include_bos,
        out=snakemake.output.heads,
        attrs=dict(p.attrs, shard=snakemake.wildcards.shard),
    )
