"""Each head's top tokens over all shards (selfrepair.stages.repair.head_top_tokens)."""

from selfrepair.stages.joblog import logged, rule_params
from selfrepair.stages.repair import head_top_tokens

with logged(snakemake.log[0], snakemake):
    head_top_tokens(
        shards=list(snakemake.input.shards),
        **rule_params(snakemake, "top_fraction", "attrs"),
        heads=snakemake.params.model.get("heads"),
        out=snakemake.output.top_tokens,
    )
