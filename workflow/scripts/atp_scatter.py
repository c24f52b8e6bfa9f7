"""Beyond the paper: AtP and GradDrop against the exact effect per head
(selfrepair.stages.atp_figures.atp_scatter)."""

from selfrepair.stages import atp_figures
from selfrepair.stages.joblog import logged, rule_params

with logged(snakemake.log[0], snakemake):
    atp_figures.atp_scatter(
        list(snakemake.input.summaries),
        **rule_params(snakemake, "models", "top_fraction"),
        out=[snakemake.output.pdf, snakemake.output.png],
    )
