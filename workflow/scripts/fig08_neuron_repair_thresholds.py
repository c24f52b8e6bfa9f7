"""Fig 8: how often the k-th best neuron repairs a given share of the head's DE
(selfrepair.stages.figures.fig08)."""

from selfrepair.stages import figures
from selfrepair.stages.joblog import logged

with logged(snakemake.log[0], snakemake):
    i, p, o = snakemake.input, snakemake.params, snakemake.output
    figures.fig08(list(i.reductions), p.targets, p.ranks, i.picks, [o.pdf, o.png])
