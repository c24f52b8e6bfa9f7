"""Fig 8: how often the k-th best neuron repairs a given share of the head's DE."""

import selfrepair.stages.figures as mechanism_figures
from selfrepair.analysis.substitutes import resolve_params
from selfrepair.plots.common import save_figure
from selfrepair.stages.joblog import logged

with logged(snakemake.log[0]):
    fig = mechanism_figures.fig08(
        list(snakemake.input.reductions),
        [resolve_params(t, snakemake.input.picks) for t in snakemake.params.targets],
        snakemake.params.ranks,
    )
    save_figure(fig, snakemake.output.pdf, snakemake.output.png)
