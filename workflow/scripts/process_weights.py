"""A model's processed weights, read by its later model jobs
(selfrepair.stages.clean.process_weights)."""

from selfrepair.stages.clean import process_weights
from selfrepair.stages.job import ModelJob, checkpoint_folder
from selfrepair.stages.joblog import logged

with logged(snakemake.log[0], snakemake):
    process_weights(
        ModelJob(
            tokens="",
            entry=snakemake.params.model,
            batch_size=1,
            checkpoint=checkpoint_folder(snakemake.params.model, snakemake.input.get("model_dir")),
            threads=snakemake.threads,
        ),
        out=snakemake.output.weights,
    )
