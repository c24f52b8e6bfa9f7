"""The index page of the head explorer (selfrepair.stages.explorer.explorer_index)."""

from selfrepair.stages.explorer import explorer_index
from selfrepair.stages.joblog import logged

with logged(snakemake.log[0], snakemake):
    explorer_index(
        pages=list(snakemake.input.pages),
        labels=list(snakemake.params.labels),
        out=snakemake.output.html,
    )
