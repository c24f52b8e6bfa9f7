"""A substitute's heads picked by the paper's criterion from the run's store
(selfrepair.stages.summaries.pick_substitute)."""

from selfrepair.stages.joblog import logged, rule_params
from selfrepair.stages.summaries import pick_substitute

with logged(snakemake.log[0], snakemake):
    pick_substitute(
        store=snakemake.input.store,
        model=snakemake.wildcards.model,
        key=snakemake.wildcards.key,
        **rule_params(snakemake, "target", "pick"),
        out=snakemake.output.pick,
    )
