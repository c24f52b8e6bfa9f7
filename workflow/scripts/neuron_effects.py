"""Neuron direct effects of one model's configured heads on their top tokens
(selfrepair.stages.mechanisms.neuron_stage)."""

from selfrepair.analysis.substitutes import heads_with_picks
from selfrepair.stages.ablation import set_threads
from selfrepair.stages.joblog import logged
from selfrepair.stages.mechanisms import neuron_stage

with logged(snakemake.log[0]):
    set_threads(snakemake.threads)
    neuron_stage(
        tokens=snakemake.input.tokens,
        bounds=snakemake.params.bounds,
        entry=snakemake.params.model,
        checkpoint=snakemake.input.get("model_dir"),
        device=snakemake.params.device,
        dtype=snakemake.params.dtype,
        heads=heads_with_picks(snakemake.params.heads, snakemake.input.picks),
        mlp_layer=snakemake.params.mlp_layer,
        ablation=snakemake.params.ablation,
        top_fraction=snakemake.params.top_fraction,
        batch_size=snakemake.params.batch_size,
        mean_include_bos=snakemake.params.mean_include_bos,
        out=snakemake.output.selected,
        attrs=snakemake.params.attrs,
    )
