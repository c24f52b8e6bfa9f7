"""One model's head explorer page, or one (model, task)'s (rule task_explorer)
(selfrepair.stages.explorer.head_explorer)."""

from selfrepair.stages.explorer import head_explorer
from selfrepair.stages.joblog import logged

inputs = snakemake.input
params = snakemake.params

with logged(snakemake.log[0], snakemake):
    head_explorer(
        model=snakemake.wildcards.model,
        model_entry=dict(params.model_entry),
        tokens=inputs.tokens,
        shards=list(inputs.shards),
        summaries=list(inputs.summaries),
        intervals=list(inputs.intervals),
        ablations=list(params.ablations),
        tokens_per_head=int(params.tokens_per_head),
        context=int(params.context),
        repairers=int(params.repairers),
        out=snakemake.output.html,
        tokenizer_dir=inputs.get("model_dir"),
        repairs=list(inputs.repairs),
        task=snakemake.wildcards.get("task"),
        metric=inputs.get("metric"),  # a task's clean metric
    )
