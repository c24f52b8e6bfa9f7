"""Figs 2 and 21-24: per-head mean direct-effect drop against mean logit drop (rule fig21_24 is
fig02 `with:` other models; selfrepair.stages.figures.fig02 and .fig21_24)."""

from selfrepair.stages import figures
from selfrepair.stages.joblog import logged

with logged(snakemake.log[0], snakemake):
    draw = {"fig02": figures.fig02, "fig21_24": figures.fig21_24}[snakemake.rule]
    i, p, o = snakemake.input, snakemake.params, snakemake.output
    draw(i.summaries, p.models, p.shown, p.n_tokens, p.idealised_from, [o.pdf, o.png])
