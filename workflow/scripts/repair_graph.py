"""Beyond the paper, the repair graph table (selfrepair.stages.repair_figures.repair_graph)."""

from selfrepair.stages import repair_figures
from selfrepair.stages.joblog import logged, rule_params

with logged(snakemake.log[0], snakemake):
    repair_figures.repair_graph(
        summaries=list(snakemake.input.summaries),
        details=list(snakemake.input.details),
        **rule_params(snakemake, "models", "repairers", "bootstrap"),
        csv=snakemake.output.csv,
        html_path=snakemake.output.html,
        note=snakemake.params.caption,
    )
