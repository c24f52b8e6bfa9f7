"""Per-head summary table of every model and ablation, as CSV and HTML (selfrepair.tables)."""

from selfrepair.joblog import logged
from selfrepair.tables import table_stage

with logged(snakemake.log[0]):
    table_stage(
        keys=snakemake.params.runs,
        summaries=list(snakemake.input.summaries),
        intervals=list(snakemake.input.intervals),
        csv=snakemake.output.csv,
        html_path=snakemake.output.html,
        note=snakemake.params.caption.replace("**", ""),
    )
