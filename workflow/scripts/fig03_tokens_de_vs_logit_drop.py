"""Fig 3: per-token direct-effect drop against logit drop for a few heads of one model."""

from selfrepair.analysis.reduce import head_tokens
from selfrepair.analysis.substitutes import resolve_params
from selfrepair.config.core import check_target_heads
from selfrepair.plots.common import open_tokens, save_figure
from selfrepair.plots.effects import tokens_de_vs_logit_drop
from selfrepair.stages.joblog import logged

with logged(snakemake.log[0]):
    target = resolve_params(snakemake.params.target, snakemake.input.picks)
    shards = open_tokens(snakemake.input.shards, target["model"], snakemake.params.n_tokens)
    check_target_heads(target, shards.sizes["layer"], shards.sizes["head"])
    tokens = head_tokens(shards, [tuple(h) for h in target["heads"]])
    fig = tokens_de_vs_logit_drop(tokens, target["model"])
    save_figure(fig, snakemake.output.pdf, snakemake.output.png)
