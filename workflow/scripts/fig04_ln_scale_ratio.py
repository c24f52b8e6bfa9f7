"""Fig 4: clean / ablated final-LN scale on one head's top tokens, per ablation
(selfrepair.stages.figures.fig04)."""

from selfrepair.stages import figures
from selfrepair.stages.joblog import logged

with logged(snakemake.log[0], snakemake):
    i, p, o = snakemake.input, snakemake.params, snakemake.output
    norms = dict(zip(p.ablations, i.norms, strict=True))
    figures.fig04(norms, p.target, i.picks, [o.pdf, o.png])
