"""Fig 7: the top self-repairing neuron's clean vs ablated DE on the MLP's top repair tokens
(selfrepair.stages.figures.fig07)."""

from selfrepair.stages import figures
from selfrepair.stages.joblog import logged

with logged(snakemake.log[0], snakemake):
    i, p, o = snakemake.input, snakemake.params, snakemake.output
    figures.fig07(i.reductions, p.target, i.picks, [o.pdf, o.png])
