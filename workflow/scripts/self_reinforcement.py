"""Self-reinforcement experiment of one model's heads
(selfrepair.stages.mechanisms.self_reinforcement)."""

from selfrepair.stages.job import ModelJob
from selfrepair.stages.joblog import logged, rule_params
from selfrepair.stages.mechanisms import self_reinforcement

with logged(snakemake.log[0], snakemake):
    self_reinforcement(
        ModelJob.from_snakemake(snakemake),
        **rule_params(snakemake, "heads", "second_half", "scales", "rows", "seq_len", "attrs"),
        out=snakemake.output.reinforcement,
    )
