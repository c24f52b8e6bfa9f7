"""A task's prompts from the model's own tokenizer (selfrepair.stages.tasks.task_prompts)."""

from selfrepair.stages.joblog import logged
from selfrepair.stages.tasks import task_prompts

with logged(snakemake.log[0], snakemake):
    task_prompts(
        task=snakemake.wildcards.task,
        spec=dict(snakemake.params.spec),
        model=dict(snakemake.params.model),
        seed=int(snakemake.params.seed),
        out=snakemake.output.prompts,
        attrs=dict(snakemake.params.attrs),
        tokenizer_dir=snakemake.input.get("model_dir") or snakemake.input.get("tokenizer"),
        n_ctx=snakemake.params.n_ctx,
    )
