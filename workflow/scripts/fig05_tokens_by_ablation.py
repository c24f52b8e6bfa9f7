"""Fig 5: one head's per-token direct-effect drop against logit drop under each ablation."""

from selfrepair.analysis.reduce import head_tokens
from selfrepair.analysis.substitutes import resolve_params
from selfrepair.config.core import check_target_heads
from selfrepair.plots.common import open_tokens, save_figure
from selfrepair.plots.effects import tokens_by_ablation
from selfrepair.stages.joblog import logged

with logged(snakemake.log[0]):
    target = resolve_params(snakemake.params.target, snakemake.input.picks)
    n_tokens = snakemake.params.n_tokens
    (head,) = [tuple(h) for h in target["heads"]]
    shards = {
        ablation: open_tokens(getattr(snakemake.input, ablation), target["model"], n_tokens)
        for ablation in snakemake.params.ablations
    }
    for ds in shards.values():
        check_target_heads(target, ds.sizes["layer"], ds.sizes["head"])
    tokens = {a: head_tokens(ds, [head]).isel(head_name=0) for a, ds in shards.items()}
    title = f"{target['model']} L{head[0]}H{head[1]}"
    save_figure(tokens_by_ablation(tokens, title), snakemake.output.pdf, snakemake.output.png)
