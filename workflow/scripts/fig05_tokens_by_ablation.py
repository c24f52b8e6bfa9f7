"""Fig 5: one head's per-token direct-effect drop against logit drop under each ablation
(selfrepair.stages.figures.fig05)."""

from selfrepair.stages import figures
from selfrepair.stages.joblog import logged

with logged(snakemake.log[0], snakemake):
    i, p, o = snakemake.input, snakemake.params, snakemake.output
    shards = {ablation: getattr(i, ablation) for ablation in p.ablations}
    figures.fig05(shards, p.target, p.n_tokens, i.picks, [o.pdf, o.png])
