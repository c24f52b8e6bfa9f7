"""Self-reinforcement experiment of one model's heads (selfrepair.stages.mechanisms)."""

from selfrepair.stages.ablation import set_threads
from selfrepair.stages.joblog import logged
from selfrepair.stages.mechanisms import reinforcement_stage

with logged(snakemake.log[0]):
    set_threads(snakemake.threads)
    reinforcement_stage(
        tokens=snakemake.input.tokens,
        entry=snakemake.params.model,
        checkpoint=snakemake.input.get("model_dir"),
        device=snakemake.params.device,
        dtype=snakemake.params.dtype,
        heads=snakemake.params.heads,
        second_half=snakemake.params.second_half,
        scales=snakemake.params.scales,
        rows=snakemake.params.rows,
        seq_len=snakemake.params.seq_len,
        batch_size=snakemake.params.batch_size,
        out=snakemake.output.reinforcement,
        attrs=snakemake.params.attrs,
    )
