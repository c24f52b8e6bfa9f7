"""Snakemake script: pack the measurement corpus into rows of tokens (a Zarr store)."""

import logging
import sys

log_file = open(snakemake.log[0], "w", buffering=1)
sys.stdout = sys.stderr = log_file
logging.basicConfig(
    stream=log_file, level=logging.INFO, format="%(asctime)s %(name)s %(message)s", force=True
)

from selfrepair.corpus import tokenize_to_zarr  # noqa: E402

tokenizer_dir = snakemake.input.get("tokenizer") or snakemake.input.get("checkpoint")
params = snakemake.params
seed = params.get("seed")
attrs = tokenize_to_zarr(
    snakemake.output.tokens,
    corpus=dict(params.corpus),
    model=dict(params.model),
    seq_len=int(params.seq_len),
    n_rows=int(params.n_rows),
    shard_rows=int(params.shard_rows),
    seed=None if seed is None else int(seed),
    tokenizer_dir=str(tokenizer_dir) if tokenizer_dir else None,
)
logging.info(
    "%d rows of %d tokens (tokenizer %s) written to %s",
    attrs["n_rows"],
    attrs["seq_len"],
    attrs["tokenizer"],
    snakemake.output.tokens,
)
