"""A substitute's heads picked by the paper's criterion from the run's store
(selfrepair.analysis.substitutes)."""

from selfrepair.analysis.substitutes import pick_stage
from selfrepair.stages.joblog import logged

with logged(snakemake.log[0]):
    pick_stage(
        store=snakemake.input.store,
        model=snakemake.wildcards.model,
        key=snakemake.wildcards.key,
        target=snakemake.params.target,
        pick=snakemake.params.pick,
        out=snakemake.output.pick,
    )
