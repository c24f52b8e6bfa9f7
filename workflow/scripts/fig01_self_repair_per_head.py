"""Fig 1: per-head mean self-repair on top tokens by relative depth, one panel per model."""

from selfrepair.plots.common import open_by_model, save_figure
from selfrepair.plots.per_head import self_repair_per_head
from selfrepair.stages.joblog import logged

with logged(snakemake.log[0]):
    models, n_tokens = snakemake.params.models, snakemake.params.n_tokens
    summaries = open_by_model(snakemake.input.summaries, models, n_tokens)
    intervals = open_by_model(snakemake.input.intervals, models, n_tokens)
    fig = self_repair_per_head(
        summaries,
        {m: ds.top_self_repair for m, ds in intervals.items()},
        top_fraction=snakemake.params.top_fraction,
    )
    save_figure(fig, snakemake.output.pdf, snakemake.output.png)
