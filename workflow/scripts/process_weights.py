"""A model's processed weights, and its training checkpoints', read by its later model jobs
(selfrepair.stages.clean.process_weights)."""

from selfrepair.stages.clean import process_weights
from selfrepair.stages.job import ModelJob, checkpoint_folder
from selfrepair.stages.joblog import logged


def weights_job(entry, model_dir):
    return ModelJob(
        tokens="",
        entry=entry,
        batch_size=1,
        checkpoint=checkpoint_folder(entry, model_dir),
        threads=snakemake.threads,
    )


with logged(snakemake.log[0], snakemake):
    process_weights(
        weights_job(snakemake.params.model, snakemake.input.get("model_dir")),
        out=snakemake.output.weights,
        checkpoints=[
            weights_job(entry, folder)
            for entry, folder in zip(
                snakemake.params.checkpoints, snakemake.params.checkpoint_dirs, strict=True
            )
        ],
    )
