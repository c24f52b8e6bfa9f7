"""Snakemake script: pack the measured corpus into rows of tokens (a Zarr store).

The tokenizer comes from the model's local folder (input model_dir, or tokenizer/checkpoint)
when there is one, else from the Hugging Face name TransformerLens uses for the model."""

import logging

from selfrepair.stages.data import tokenize
from selfrepair.stages.joblog import logged

inputs = snakemake.input
tokenizer_dir = inputs.get("model_dir") or inputs.get("tokenizer") or inputs.get("checkpoint")
params = snakemake.params
seed = params.get("seed")

with logged(snakemake.log[0], snakemake):
    attrs = tokenize(
        snakemake.output.tokens,
        corpus=dict(params.corpus),
        model=dict(params.model),
        seq_len=int(params.seq_len),
        n_rows=int(params.n_rows),
        shard_rows=int(params.shard_rows),
        seed=None if seed is None else int(seed),
        tokenizer_dir=str(tokenizer_dir) if tokenizer_dir else None,
        attrs=dict(params.attrs),
    )
    logging.info(
        "%d rows of %d tokens (tokenizer %s) written to %s",
        attrs["n_rows"],
        attrs["seq_len"],
        attrs["tokenizer"],
        snakemake.output.tokens,
    )
