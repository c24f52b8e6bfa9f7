"""Neuron reductions for Figs 7, 8, 15 (selfrepair.stages.mechanisms.neuron_reductions)."""

from selfrepair.stages.joblog import logged
from selfrepair.stages.mechanisms import neuron_reductions

with logged(snakemake.log[0]):
    neuron_reductions(
        selected=snakemake.input.selected,
        thresholds=snakemake.params.thresholds,
        top_n=snakemake.params.top_n,
        out=snakemake.output.reductions,
        attrs=snakemake.params.attrs,
    )
