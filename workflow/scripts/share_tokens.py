"""A training checkpoint's tokens: its model's, under its own key (selfrepair.stages.data.share_tokens)."""

from selfrepair.stages.data import share_tokens
from selfrepair.stages.joblog import logged

with logged(snakemake.log[0], snakemake):
    share_tokens(
        tokens=snakemake.input.tokens,
        out=snakemake.output.tokens,
        entry=snakemake.params.model,
        shard_rows=snakemake.params.shard_rows,
        attrs=snakemake.params.attrs,
        model_dir=snakemake.input.get("model_dir"),
    )
