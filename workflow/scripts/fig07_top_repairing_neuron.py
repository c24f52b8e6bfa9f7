"""Fig 7: the top self-repairing neuron's clean vs ablated DE on the MLP's top repair tokens."""

import selfrepair.stages.figures as mechanism_figures
from selfrepair.analysis.substitutes import resolve_params
from selfrepair.plots.common import save_figure
from selfrepair.stages.joblog import logged

with logged(snakemake.log[0]):
    fig = mechanism_figures.fig07(
        snakemake.input.reductions, resolve_params(snakemake.params.target, snakemake.input.picks)
    )
    save_figure(fig, snakemake.output.pdf, snakemake.output.png)
