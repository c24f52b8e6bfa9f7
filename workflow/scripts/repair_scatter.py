"""Beyond the paper: a repairer's change of direct effect per token against the ablated head's
drop (selfrepair.stages.repair_figures.repair_scatter)."""

from selfrepair.stages import repair_figures
from selfrepair.stages.joblog import logged, rule_params

with logged(snakemake.log[0], snakemake):
    repair_figures.repair_scatter(
        list(snakemake.input.summaries),
        list(snakemake.input.details),
        **rule_params(snakemake, "models", "top_fraction"),
        out=[snakemake.output.pdf, snakemake.output.png],
    )
