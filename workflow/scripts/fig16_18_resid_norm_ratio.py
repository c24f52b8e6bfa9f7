"""Figs 16-18: ablated / clean final residual norm on all tokens, per ablation and head."""

from selfrepair.joblog import logged
from selfrepair.plots import mechanism_figures
from selfrepair.plots.common import save_figure
from selfrepair.substitutes import resolve_params

with logged(snakemake.log[0]):
    paths = dict(zip(snakemake.params.ablations, snakemake.input.norms, strict=True))
    fig = mechanism_figures.fig16_18(
        paths, resolve_params(snakemake.params.target, snakemake.input.picks)
    )
    save_figure(fig, snakemake.output.pdf, snakemake.output.png)
