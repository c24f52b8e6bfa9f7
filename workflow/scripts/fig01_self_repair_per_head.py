"""Fig 1: per-head mean self-repair on top tokens by relative depth, one panel per model
(selfrepair.stages.figures.fig01)."""

from selfrepair.stages import figures
from selfrepair.stages.joblog import logged

with logged(snakemake.log[0], snakemake):
    i, p, o = snakemake.input, snakemake.params, snakemake.output
    figures.fig01(i.summaries, i.intervals, p.models, p.n_tokens, p.top_fraction, [o.pdf, o.png])
