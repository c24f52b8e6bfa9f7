"""Snakemake script: train the demo byte-level BPE tokenizer on the corpus' train split."""

import logging

from selfrepair.stages.data import train_tokenizer
from selfrepair.stages.joblog import logged

with logged(snakemake.log[0], snakemake):
    tokenizer = train_tokenizer(
        dict(snakemake.params.corpus),
        int(snakemake.params.vocab_size),
        snakemake.output.tokenizer,
    )
    logging.info("tokenizer of %d tokens written to %s", len(tokenizer), snakemake.output.tokenizer)
