"""Neuron direct effects of one model's configured heads on their top tokens
(selfrepair.stages.mechanisms.neuron_effects)."""

from selfrepair.stages.job import ModelJob
from selfrepair.stages.joblog import logged
from selfrepair.stages.mechanisms import neuron_effects
from selfrepair.stages.summaries import heads_with_picks

p = snakemake.params
with logged(snakemake.log[0]):
    neuron_effects(
        ModelJob.from_snakemake(snakemake),
        heads=heads_with_picks(p.heads, snakemake.input.picks),
        mlp_layer=p.mlp_layer,
        ablation=p.ablation,
        top_fraction=p.top_fraction,
        mean_include_bos=p.mean_include_bos,
        out=snakemake.output.selected,
        attrs=p.attrs,
    )
