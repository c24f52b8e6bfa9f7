"""Figs 2 and 21-24: per-head mean direct-effect drop against mean logit drop."""

from selfrepair.analysis.reduce import head_effect_drops
from selfrepair.plots.common import open_by_model, save_figure
from selfrepair.plots.effects import heads_de_vs_logit_drop
from selfrepair.stages.joblog import logged

with logged(snakemake.log[0]):
    p = snakemake.params
    summaries = open_by_model(snakemake.input.summaries, p.models, p.n_tokens)
    drops = {m: head_effect_drops(summaries[m]) for m in dict.fromkeys(p.shown)}
    if p.idealised_from is not None:
        drops.setdefault(p.idealised_from, head_effect_drops(summaries[p.idealised_from]))
    fig = heads_de_vs_logit_drop(drops, shown=p.shown, idealised_from=p.idealised_from)
    save_figure(fig, snakemake.output.pdf, snakemake.output.png)
