"""Figs 9 and 19: a head's clean vs new DE after adding its own output back to its input."""

from selfrepair.joblog import logged
from selfrepair.plots import mechanism_figures
from selfrepair.plots.common import save_figure
from selfrepair.substitutes import resolve_params

with logged(snakemake.log[0]):
    fig = mechanism_figures.fig09_19(
        snakemake.input.reinforcement,
        resolve_params(snakemake.params.target, snakemake.input.picks),
        snakemake.params.scales,
    )
    save_figure(fig, snakemake.output.pdf, snakemake.output.png)
