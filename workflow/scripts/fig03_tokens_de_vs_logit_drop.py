"""Fig 3: per-token direct-effect drop against logit drop for a few heads of one model
(selfrepair.stages.figures.fig03)."""

from selfrepair.stages import figures
from selfrepair.stages.joblog import logged

with logged(snakemake.log[0], snakemake):
    i, p, o = snakemake.input, snakemake.params, snakemake.output
    figures.fig03(i.shards, p.target, p.n_tokens, i.picks, [o.pdf, o.png])
