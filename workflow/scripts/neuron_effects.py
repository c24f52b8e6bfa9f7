"""Neuron direct effects of one model's configured heads on their top tokens, and their
reductions for Figs 7, 8 and 15 (selfrepair.stages.mechanisms.neuron_effects)."""

from selfrepair.stages.job import ModelJob
from selfrepair.stages.joblog import logged, rule_params
from selfrepair.stages.mechanisms import neuron_effects
from selfrepair.stages.summaries import heads_with_picks

with logged(snakemake.log[0], snakemake):
    neuron_effects(
        ModelJob.from_snakemake(snakemake),
        heads=heads_with_picks(snakemake.params.heads, snakemake.input.picks),
        **rule_params(snakemake, "mlp_layer", "ablation", "top_fraction", "mean_include_bos"),
        **rule_params(snakemake, "thresholds", "top_n", "store_tokens"),
        out=snakemake.output.selected,
        reductions_out=snakemake.output.reductions,
        attrs=snakemake.params.attrs,
    )
