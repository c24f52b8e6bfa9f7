"""Figs 9 and 19: a head's clean vs new DE after adding its own output back to its input."""

import selfrepair.stages.figures as mechanism_figures
from selfrepair.analysis.substitutes import resolve_params
from selfrepair.plots.common import save_figure
from selfrepair.stages.joblog import logged

with logged(snakemake.log[0]):
    fig = mechanism_figures.fig09_19(
        snakemake.input.reinforcement,
        resolve_params(snakemake.params.target, snakemake.input.picks),
        snakemake.params.scales,
    )
    save_figure(fig, snakemake.output.pdf, snakemake.output.png)
