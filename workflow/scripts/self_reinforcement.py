"""Self-reinforcement experiment of one model's heads
(selfrepair.stages.mechanisms.self_reinforcement)."""

from selfrepair.stages.job import ModelJob
from selfrepair.stages.joblog import logged
from selfrepair.stages.mechanisms import self_reinforcement

p = snakemake.params
with logged(snakemake.log[0]):
    self_reinforcement(
        ModelJob.from_snakemake(snakemake),
        heads=p.heads,
        second_half=p.second_half,
        scales=p.scales,
        rows=p.rows,
        seq_len=p.seq_len,
        out=snakemake.output.reinforcement,
        attrs=p.attrs,
    )
