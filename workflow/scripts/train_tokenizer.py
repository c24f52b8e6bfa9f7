"""Snakemake script: train the demo byte-level BPE tokenizer on the corpus' train split."""

import logging
import sys

log_file = open(snakemake.log[0], "w", buffering=1)
sys.stdout = sys.stderr = log_file
logging.basicConfig(
    stream=log_file, level=logging.INFO, format="%(asctime)s %(name)s %(message)s", force=True
)

from selfrepair.training import train_tokenizer_from_corpus  # noqa: E402

tokenizer = train_tokenizer_from_corpus(
    dict(snakemake.params.corpus), int(snakemake.params.vocab_size), snakemake.output.tokenizer
)
logging.info("tokenizer of %d tokens written to %s", len(tokenizer), snakemake.output.tokenizer)
