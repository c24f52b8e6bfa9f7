"""Fig 15: cumulative share of neuron self-repair held by the top-k neurons
(selfrepair.stages.figures.fig15)."""

from selfrepair.stages import figures
from selfrepair.stages.joblog import logged

with logged(snakemake.log[0], snakemake):
    i, p, o = snakemake.input, snakemake.params, snakemake.output
    figures.fig15(i.reductions, p.target, i.picks, [o.pdf, o.png])
