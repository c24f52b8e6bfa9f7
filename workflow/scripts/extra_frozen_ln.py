"""Beyond the paper: per-layer self-repair as measured, with the final LayerNorm frozen, and
with every LayerNorm frozen at its clean scale (selfrepair.stages.figures.extra_frozen_ln)."""

from selfrepair.stages import figures
from selfrepair.stages.joblog import logged

with logged(snakemake.log[0], snakemake):
    i, p, o = snakemake.input, snakemake.params, snakemake.output
    figures.extra_frozen_ln(
        i.normal, i.frozen, p.models, p.n_tokens, p.top_fraction, [o.pdf, o.png]
    )
