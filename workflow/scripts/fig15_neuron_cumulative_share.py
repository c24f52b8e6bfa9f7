"""Fig 15: cumulative share of neuron self-repair held by the top-k neurons."""

from selfrepair.joblog import logged
from selfrepair.plots import mechanism_figures
from selfrepair.plots.common import save_figure
from selfrepair.substitutes import resolve_params

with logged(snakemake.log[0]):
    fig = mechanism_figures.fig15(
        snakemake.input.reductions, resolve_params(snakemake.params.target, snakemake.input.picks)
    )
    save_figure(fig, snakemake.output.pdf, snakemake.output.png)
