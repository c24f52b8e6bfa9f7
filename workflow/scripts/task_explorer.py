"""One (model, task) head explorer page (selfrepair.stages.explorer.task_explorer)."""

from selfrepair.stages.explorer import task_explorer
from selfrepair.stages.joblog import logged

inputs = snakemake.input
params = snakemake.params

with logged(snakemake.log[0], snakemake):
    task_explorer(
        model=snakemake.wildcards.model,
        task=snakemake.wildcards.task,
        model_entry=dict(params.model_entry),
        prompts=inputs.prompts,
        stores=list(inputs.heads),
        summaries=list(inputs.summaries),
        intervals=list(inputs.intervals),
        repairs=list(inputs.repairs),
        ablations=list(params.ablations),
        tokens_per_head=int(params.tokens_per_head),
        context=int(params.context),
        repairers=int(params.repairers),
        out=snakemake.output.html,
        metric=inputs.metric,
        tokenizer_dir=inputs.get("model_dir"),
    )
