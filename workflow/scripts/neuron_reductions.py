"""Neuron reductions for Figs 7, 8, 15 (selfrepair.stages.mechanisms)."""

from selfrepair.stages.joblog import logged
from selfrepair.stages.mechanisms import neuron_reduction_stage

with logged(snakemake.log[0]):
    neuron_reduction_stage(
        selected=snakemake.input.selected,
        thresholds=snakemake.params.thresholds,
        top_n=snakemake.params.top_n,
        out=snakemake.output.reductions,
        attrs=snakemake.params.attrs,
    )
