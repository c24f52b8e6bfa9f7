"""Fig 15: cumulative share of neuron self-repair held by the top-k neurons."""

import selfrepair.stages.figures as mechanism_figures
from selfrepair.analysis.substitutes import resolve_params
from selfrepair.plots.common import save_figure
from selfrepair.stages.joblog import logged

with logged(snakemake.log[0]):
    fig = mechanism_figures.fig15(
        snakemake.input.reductions, resolve_params(snakemake.params.target, snakemake.input.picks)
    )
    save_figure(fig, snakemake.output.pdf, snakemake.output.png)
