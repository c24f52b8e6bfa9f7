"""Fig 1: per-head mean self-repair on top tokens by relative depth, one panel per model, or on
a task's answers (rule task_self_repair_per_head) (selfrepair.stages.figures.fig01)."""

from selfrepair.stages import figures
from selfrepair.stages.joblog import logged

with logged(snakemake.log[0], snakemake):
    i, p, o = snakemake.input, snakemake.params, snakemake.output
    figures.fig01(
        i.summaries,
        i.intervals,
        p.models,
        p.n_tokens,
        p.top_fraction,
        [o.pdf, o.png],
        task=p.get("task"),  # a task's variant only
    )
