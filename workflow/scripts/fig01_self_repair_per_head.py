"""Fig 1: per-head mean self-repair on top tokens by relative depth, one panel per model."""

from selfrepair.joblog import logged
from selfrepair.plots.common import open_by_model, save_figure
from selfrepair.plots.per_head import self_repair_per_head

with logged(snakemake.log[0]):
    summaries = open_by_model(
        snakemake.input.summaries, snakemake.params.models, snakemake.params.n_tokens
    )
    fig = self_repair_per_head(summaries, top_fraction=snakemake.params.top_fraction)
    save_figure(fig, snakemake.output.pdf, snakemake.output.png)
