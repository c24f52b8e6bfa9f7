"""Per-head summary table of every model and ablation, as CSV and HTML (selfrepair.analysis.tables)."""

from selfrepair.analysis.tables import table_stage
from selfrepair.stages.joblog import logged

with logged(snakemake.log[0]):
    table_stage(
        keys=snakemake.params.runs,
        summaries=list(snakemake.input.summaries),
        intervals=list(snakemake.input.intervals),
        csv=snakemake.output.csv,
        html_path=snakemake.output.html,
        note=snakemake.params.caption.replace("**", ""),
    )
