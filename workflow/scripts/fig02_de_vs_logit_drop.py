"""Figs 2 and 21-24: per-head mean direct-effect drop against mean logit drop (rule fig21_24 is
fig02 `with:` other models, rule task_de_vs_metric_drop fig02 on a task's answers;
selfrepair.stages.figures.fig02 and .fig21_24)."""

from selfrepair.stages import figures
from selfrepair.stages.joblog import logged

with logged(snakemake.log[0], snakemake):
    draw = figures.fig21_24 if snakemake.rule == "fig21_24" else figures.fig02
    i, p, o = snakemake.input, snakemake.params, snakemake.output
    draw(
        i.summaries,
        p.models,
        p.shown,
        p.n_tokens,
        p.idealised_from,
        [o.pdf, o.png],
        task=p.get("task"),  # a task's variant only
    )
