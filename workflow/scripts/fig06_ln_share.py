"""Fig 6 (clipped LayerNorm share per head) and Fig 11 (clipped beside unclipped; rule fig11 is
fig06 `with:` other outputs): selfrepair.stages.figures.fig06 and .fig11."""

from selfrepair.stages import figures
from selfrepair.stages.joblog import logged

with logged(snakemake.log[0], snakemake):
    draw = {"fig06": figures.fig06, "fig11": figures.fig11}[snakemake.rule]
    i, p, o = snakemake.input, snakemake.params, snakemake.output
    draw(i.summaries, i.intervals, p.models, p.n_tokens, p.top_fraction, [o.pdf, o.png])
