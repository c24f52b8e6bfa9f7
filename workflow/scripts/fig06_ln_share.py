"""Fig 6 (clipped LayerNorm share per head) and Fig 11 (clipped beside unclipped)."""

from selfrepair.plots.common import open_by_model, save_figure
from selfrepair.plots.per_head import ln_share_clipped_and_unclipped, ln_share_per_head
from selfrepair.stages.joblog import logged

with logged(snakemake.log[0]):
    p = snakemake.params
    summaries = open_by_model(snakemake.input.summaries, p.models, p.n_tokens)
    intervals = open_by_model(snakemake.input.intervals, p.models, p.n_tokens)
    if p.unclipped:
        fig = ln_share_clipped_and_unclipped(summaries, intervals, p.top_fraction)
    else:
        clipped = {m: ds.top_ln_share_clipped for m, ds in intervals.items()}
        fig = ln_share_per_head(summaries, clipped, p.top_fraction)
    save_figure(fig, snakemake.output.pdf, snakemake.output.png)
