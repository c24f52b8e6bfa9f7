"""Snakemake script: train one demo model (gpt2- or pythia-style) and save its checkpoint."""

import json
import logging
import sys

log_file = open(snakemake.log[0], "w", buffering=1)
sys.stdout = sys.stderr = log_file
logging.basicConfig(
    stream=log_file, level=logging.INFO, format="%(asctime)s %(name)s %(message)s", force=True
)

from selfrepair.training import train_from_corpus  # noqa: E402

params = snakemake.params
metrics = train_from_corpus(
    snakemake.input.tokenizer,
    snakemake.output.checkpoint,
    arch=params.arch,
    n_layers=int(params.n_layers),
    d_model=int(params.d_model),
    n_heads=int(params.n_heads),
    n_ctx=int(params.n_ctx),
    steps=int(params.steps),
    batch_size=int(params.batch_size),
    lr=float(params.lr),
    seed=int(params.seed),
    corpus=dict(params.corpus),
)
with open(snakemake.output.metrics, "w") as out:
    json.dump(metrics, out, indent=2)
    out.write("\n")
