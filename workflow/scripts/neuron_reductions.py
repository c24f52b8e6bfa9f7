"""Neuron reductions for Figs 7, 8, 15 (selfrepair.stages.mechanisms.neuron_reductions)."""

from selfrepair.stages.joblog import logged, rule_params
from selfrepair.stages.mechanisms import neuron_reductions

with logged(snakemake.log[0]):
    neuron_reductions(
        selected=snakemake.input.selected,
        **rule_params(snakemake, "thresholds", "top_n", "attrs"),
        out=snakemake.output.reductions,
    )
