"""Snakemake script: train one demo model (gpt2- or pythia-style) and save its checkpoint.

Hyper-parameters come from params.train (the model's `train` config entry) and/or flat params
(arch, n_layers, d_model, n_heads, steps, batch_size, lr, seed); the context length from
params.n_ctx or params.seq_len."""

from selfrepair.stages.data import train_model
from selfrepair.stages.joblog import logged
from selfrepair.stages.records import write_json

params = snakemake.params
train = {**dict(params.get("train") or {}), **{k: v for k, v in params.items() if k != "train"}}

with logged(snakemake.log[0], snakemake):
    metrics = train_model(
        snakemake.input.tokenizer,
        snakemake.output.checkpoint,
        arch=train["arch"],
        n_layers=int(train["n_layers"]),
        d_model=int(train["d_model"]),
        n_heads=int(train["n_heads"]),
        n_ctx=int(train.get("n_ctx") or train["seq_len"]),
        steps=int(train["steps"]),
        batch_size=int(train["batch_size"]),
        lr=float(train["lr"]),
        seed=int(train["seed"]),
        corpus=dict(train["corpus"]),
        keep_steps=list(train.get("keep_steps") or ()),
        repeats=float(train.get("repeats") or 0.0),
        repeat_tokens=train.get("repeat_tokens"),
        repeat_lengths=train.get("repeat_lengths"),
        tie_embeddings=bool(train.get("tie_embeddings")),
    )
    write_json(snakemake.output.metrics, metrics, indent=2)
