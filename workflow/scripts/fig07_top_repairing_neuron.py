"""Fig 7: the top self-repairing neuron's clean vs ablated DE on the MLP's top repair tokens."""

from selfrepair.joblog import logged
from selfrepair.plots import mechanism_figures
from selfrepair.plots.common import save_figure
from selfrepair.substitutes import resolve_params

with logged(snakemake.log[0]):
    fig = mechanism_figures.fig07(
        snakemake.input.reductions, resolve_params(snakemake.params.target, snakemake.input.picks)
    )
    save_figure(fig, snakemake.output.pdf, snakemake.output.png)
