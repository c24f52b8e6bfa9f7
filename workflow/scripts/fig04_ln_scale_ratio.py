"""Fig 4: clean / ablated final-LN scale on one head's top tokens, per ablation."""

import selfrepair.stages.figures as mechanism_figures
from selfrepair.analysis.substitutes import resolve_params
from selfrepair.plots.common import save_figure
from selfrepair.stages.joblog import logged

with logged(snakemake.log[0]):
    paths = dict(zip(snakemake.params.ablations, snakemake.input.norms, strict=True))
    fig = mechanism_figures.fig04(
        paths, resolve_params(snakemake.params.target, snakemake.input.picks)
    )
    save_figure(fig, snakemake.output.pdf, snakemake.output.png)
