"""Figs 9 and 19: a head's clean vs new DE after adding its own output back to its input (rule
fig19 is fig09 `with:` every scale): selfrepair.stages.figures.fig09 and .fig19."""

from selfrepair.stages import figures
from selfrepair.stages.joblog import logged

with logged(snakemake.log[0], snakemake):
    draw = {"fig09": figures.fig09, "fig19": figures.fig19}[snakemake.rule]
    i, p, o = snakemake.input, snakemake.params, snakemake.output
    draw(i.reinforcement, p.target, p.scales, i.picks, [o.pdf, o.png])
