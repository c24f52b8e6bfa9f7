"""Beyond the paper: the heads attribution patching under-estimates most, with who repairs them
(selfrepair.stages.atp_figures.atp_table)."""

from selfrepair.stages import atp_figures
from selfrepair.stages.joblog import logged, rule_params

with logged(snakemake.log[0], snakemake):
    atp_figures.atp_table(
        summaries=list(snakemake.input.summaries),
        repairs=list(snakemake.input.repairs),
        **rule_params(snakemake, "runs", "table_heads", "repairers"),
        csv=snakemake.output.csv,
        html_path=snakemake.output.html,
        note=snakemake.params.caption,
    )
