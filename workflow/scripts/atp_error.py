"""Beyond the paper: AtP's error against each head's self-repair
(selfrepair.stages.atp_figures.atp_error)."""

from selfrepair.stages import atp_figures
from selfrepair.stages.joblog import logged, rule_params

with logged(snakemake.log[0], snakemake):
    atp_figures.atp_error(
        list(snakemake.input.summaries),
        **rule_params(snakemake, "models", "top_fraction"),
        out=[snakemake.output.pdf, snakemake.output.png],
    )
