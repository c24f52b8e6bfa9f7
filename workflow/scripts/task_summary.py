"""A task ablation's per-head summary, intervals and repair summary
(selfrepair.stages.task_summaries.task_summary)."""

from selfrepair.stages.joblog import logged
from selfrepair.stages.task_summaries import task_summary

params = snakemake.params
with logged(snakemake.log[0], snakemake):
    task_summary(
        ablation_store=snakemake.input.heads,
        sums=snakemake.input.sums,
        de_epsilon=float(params.de_epsilon),
        n_resamples=int(params.resamples),
        level=float(params.level),
        seed=int(params.seed),
        out=snakemake.output.summary,
        intervals_out=snakemake.output.intervals,
        repair_out=snakemake.output.repairs,
        attrs=dict(params.attrs),
    )
