"""Figs 16-18: ablated / clean final residual norm on all tokens, per ablation and head
(selfrepair.stages.figures.fig16_18)."""

from selfrepair.stages import figures
from selfrepair.stages.joblog import logged

with logged(snakemake.log[0], snakemake):
    i, p, o = snakemake.input, snakemake.params, snakemake.output
    norms = dict(zip(p.ablations, i.norms, strict=True))
    figures.fig16_18(norms, p.target, i.picks, [o.pdf, o.png])
