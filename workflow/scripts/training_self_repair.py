"""Beyond the paper: self-repair over training, per model with training checkpoints
(selfrepair.stages.training.training_self_repair)."""

from selfrepair.stages.joblog import logged
from selfrepair.stages.training import training_self_repair

with logged(snakemake.log[0], snakemake):
    p, o = snakemake.params, snakemake.output
    training_self_repair(
        checkpoints=p.checkpoints,
        top_fraction=p.top_fraction,
        de_epsilon=p.de_epsilon,
        n_tokens=p.n_tokens,
        out=[o.pdf, o.png],
    )
