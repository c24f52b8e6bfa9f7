"""A substitute's heads picked by the paper's criterion from the run's store
(selfrepair.stages.summaries.pick_substitute)."""

from selfrepair.stages.joblog import logged
from selfrepair.stages.summaries import pick_substitute

w = snakemake.wildcards
with logged(snakemake.log[0]):
    pick_substitute(
        store=snakemake.input.store,
        model=w.model,
        key=w.key,
        target=snakemake.params.target,
        pick=snakemake.params.pick,
        out=snakemake.output.pick,
    )
