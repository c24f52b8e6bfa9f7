"""Stages of the data rules (workflow/rules/data.smk), one function per rule, named after it:
`train_tokenizer`, `train_model` and `tokenize`. Each reads its inputs, calls the computation in
`selfrepair.data` and writes its output; the Snakemake scripts only unpack `snakemake`.
`open_tokens` reads back what `tokenize` wrote.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import shutil
import tempfile
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import numpy as np
import xarray as xr

from selfrepair.data import tokenizer as bpe
from selfrepair.data.hub import hub_provenance
from selfrepair.data.sources import describe_corpus, documents
from selfrepair.data.tokens import TOKENS_VARIABLE, load_tokenizer, pack_rows, special_ids
from selfrepair.stages.joblog import (
    checkpoint_folder,
    model_revision,
    provenance,
    weights_provenance,
)
from selfrepair.stages.records import json_text
from selfrepair.stages.store import open_zarr, write_zarr

__all__ = ["open_tokens", "share_tokens", "tokenize", "train_model", "train_tokenizer"]

log = logging.getLogger(__name__)


def train_tokenizer(corpus: dict, vocab_size: int, out_dir):
    """Rule train_tokenizer: the demo byte-level BPE, trained on the corpus' train split.

    Args:
        corpus: the tokenizer's `corpus` config dict (as `data.corpus`).
        vocab_size: tokens in all.
        out_dir: the tokenizer folder to write (save_pretrained).

    Returns:
        The trained fast tokenizer.
    """
    return bpe.train_tokenizer(documents(corpus, "train"), vocab_size, out_dir)


def train_model(
    tokenizer_dir,
    out_dir,
    *,
    arch: str,
    n_layers: int,
    d_model: int,
    n_heads: int,
    n_ctx: int,
    steps: int,
    batch_size: int,
    lr: float,
    seed: int,
    corpus: dict,
    d_mlp: int | None = None,
    n_heldout_rows: int = 256,
    progress: bool = True,
    keep_steps: Sequence[int] = (),
    repeats: float = 0.0,
    repeat_tokens: int | None = None,
    repeat_lengths: Sequence[int] | None = None,
    tie_embeddings: bool = False,
) -> dict:
    """Rule train_model, the whole demo training: rows of n_ctx tokens from the corpus' train
    split (all of it) and its heldout split (up to n_heldout_rows), a fresh model, training,
    checkpoint (save_pretrained folder with training.json). It is long because every
    hyper-parameter of the rule is an argument of its own (the body is some 40 lines).

    Args:
        tokenizer_dir: the trained tokenizer's folder.
        out_dir: the checkpoint folder to write.
        arch: 'gpt2' or 'pythia' (models.builders.build_model).
        n_layers, d_model, n_heads, d_mlp: the model's shape (d_mlp None: 4 * d_model).
        n_ctx: context length, and the length of every training row.
        steps, batch_size, lr, seed: the training (data.training.train_causal_lm).
        corpus: the model's `train.corpus` config dict.
        n_heldout_rows: held-out rows evaluated, spread over the whole heldout split.
        progress: show a progress bar on stderr.
        keep_steps: intermediate checkpoints to keep (0: the initial weights), saved in
            <out_dir>/checkpoints/step<N> (config.checkpoints.CHECKPOINT_DIR); the final
            weights and every file of out_dir itself are the same with or without them.
        repeats: the share of training rows replaced by a random token sequence repeated
            (data.training.repeat_rows); 0 trains on the rows as packed.
        repeat_tokens: draw the repeated sequences from this many most frequent ordinary
            tokens of the train rows (data.training.frequent_ids); None: from every one.
        repeat_lengths: [shortest, longest] repeated sequence; None: repeat_rows' default.
        tie_embeddings: a pythia model's unembedding is its embedding (build_model's).

    Returns:
        The metrics written to training.json.
    """
    # torch only here: tokenizing jobs import this module without paying for it
    from transformers import AutoTokenizer

    from selfrepair.data.training import (
        frequent_ids,
        repeat_rows,
        save_checkpoint,
        spread_rows,
        train_causal_lm,
    )
    from selfrepair.models.builders import build_model
    from selfrepair.stages.job import keep_freed_memory

    keep_freed_memory()  # each step's activations reuse the last step's pages: same weights
    tokenizer = AutoTokenizer.from_pretrained(str(tokenizer_dir))
    bos_id, eos_id = special_ids(tokenizer)
    train_rows = pack_rows(documents(corpus, "train"), tokenizer, n_ctx, None, bos_id, eos_id)
    heldout_rows = pack_rows(documents(corpus, "heldout"), tokenizer, n_ctx, None, bos_id, eos_id)
    heldout_rows = spread_rows(heldout_rows, n_heldout_rows)
    if repeats:
        from selfrepair.tasks.induction import vocabulary_ids

        vocabulary = vocabulary_ids(tokenizer)
        if repeat_tokens:
            vocabulary = frequent_ids(train_rows, vocabulary, repeat_tokens)
        lengths = tuple(repeat_lengths) if repeat_lengths else None
        train_rows = repeat_rows(train_rows, repeats, seed, vocabulary, lengths)
    log.info(
        "%d train rows, %d held-out rows of %d tokens", len(train_rows), len(heldout_rows), n_ctx
    )
    model = build_model(
        arch,
        len(tokenizer),
        n_layers,
        d_model,
        n_heads,
        n_ctx,
        d_mlp=d_mlp,
        seed=seed,
        bos_id=bos_id,
        eos_id=eos_id,
        tie_embeddings=tie_embeddings,
    )
    with _kept_checkpoints(model, tokenizer, out_dir, keep_steps, steps) as (keep, kept):
        metrics = train_causal_lm(
            model,
            train_rows,
            heldout_rows,
            steps=steps,
            batch_size=batch_size,
            lr=lr,
            seed=seed,
            progress=progress,
            keep=keep,
        )
        metrics["hyperparameters"].update(
            arch=arch, n_layers=n_layers, d_model=d_model, n_heads=n_heads, n_ctx=n_ctx, d_mlp=d_mlp
        )
        if repeats:  # recorded only when used: a run without it writes the same file as before
            metrics["hyperparameters"]["repeats"] = repeats
            extra = {"repeat_tokens": repeat_tokens, "repeat_lengths": list(repeat_lengths or [])}
            metrics["hyperparameters"] |= {k: v for k, v in extra.items() if v}
        if tie_embeddings:  # likewise
            metrics["hyperparameters"]["tie_embeddings"] = True
        metrics["corpus"] = {
            "train": describe_corpus(corpus, "train"),
            "heldout_split": "heldout",
        }
        if kept is not None:
            metrics["kept_steps"] = sorted(int(p.name[4:]) for p in kept.iterdir())
        as_text = functools.partial(json_text, indent=2)  # with its record: stages.records
        save_checkpoint(model, tokenizer, metrics, out_dir, kept=kept, as_text=as_text)
    return metrics


@contextlib.contextmanager
def _kept_checkpoints(
    model, tokenizer, out_dir, keep_steps: Sequence[int], steps: int
) -> Iterator[tuple[Callable[[int], None] | None, Path | None]]:
    """(keep, folder): keep(n) saves the weights after step n into folder/step<n> when n is one
    of keep_steps before the last (the last is the model itself); (None, None) without any.
    The folder is a temporary sibling of out_dir, removed on the way out (save_checkpoint moves
    it into the checkpoint first)."""
    from selfrepair.data.training import save_weights

    wanted = {int(s) for s in keep_steps if int(s) < steps}
    if not wanted:
        yield None, None
        return
    Path(out_dir).parent.mkdir(parents=True, exist_ok=True)
    kept = Path(tempfile.mkdtemp(prefix=f".{Path(out_dir).name}-kept-", dir=Path(out_dir).parent))

    def keep(step: int) -> None:
        if step in wanted:
            save_weights(model, tokenizer, kept / f"step{step}")

    try:
        yield keep, kept
    finally:
        shutil.rmtree(kept, ignore_errors=True)


def tokenize(
    out: str,
    corpus: dict,
    model: dict,
    seq_len: int,
    n_rows: int,
    shard_rows: int,
    seed: int | None = None,
    tokenizer_dir: str | None = None,
    attrs: dict | None = None,
) -> dict:
    """Rule tokenize: pack n_rows rows of seq_len tokens of a corpus with a model's tokenizer
    into a Zarr store `out`: variable `tokens` (int32, dims row, tok), chunked by shard_rows
    rows. The rows are the first n_rows of the corpus stream; with a seed their order is
    permuted (the set of rows, and so every token measured, does not depend on it; only which
    rows sit next to each other). Written next to `out` and renamed into place.

    Args:
        out: the store to write.
        corpus: the `data.corpus` config dict (data.sources.documents).
        model: the model's config entry {name, path, train, ...}: whose tokenizer.
        seq_len: tokens per row, BOS first.
        n_rows: rows to pack.
        shard_rows: rows per chunk (the ablation jobs' shard).
        seed: permutes the row order when given.
        tokenizer_dir: a tokenizer or checkpoint folder, else the model's own.
        attrs: the run's provenance (joblog.PROVENANCE_KEYS).

    Returns:
        The store's attributes: `attrs` with the model's revision and the packing's.
    """
    tokenizer, tokenizer_name = load_tokenizer(model, tokenizer_dir)
    bos_id, eos_id = special_ids(tokenizer)
    rows = pack_rows(documents(corpus), tokenizer, seq_len, n_rows, bos_id, eos_id)
    if seed is not None:
        rows = rows[np.random.default_rng(seed).permutation(len(rows))]
    own = dict(
        model_revision=model_revision(model.get("name"), tokenizer_dir),
        corpus=describe_corpus(corpus),
        model=model.get("name"),
        **hub_provenance(corpus, model, tokenizer_name),
        tokenizer=tokenizer_name,
        vocab_size=len(tokenizer),
        seq_len=seq_len,
        n_rows=n_rows,
        n_tokens=int(rows.size),
        bos_id=bos_id,
        eos_id=eos_id,
        row_order="corpus order" if seed is None else f"permuted with seed {seed}",
        seed=seed,
        packing="documents tokenized without special tokens, joined by EOS, cut into pieces "
        "of seq_len - 1 tokens, BOS prepended to each row",
    )
    attrs = provenance(**{**(attrs or {}), **own})
    data = xr.Dataset({TOKENS_VARIABLE: (("row", "tok"), rows)}, attrs=attrs)
    write_zarr(data, out, chunks={"row": shard_rows})
    return attrs


def open_tokens(path: str) -> tuple[np.ndarray, dict]:
    """(tokens [row, tok] int32, attributes) of a store written by `tokenize`.

    Args:
        path: the tokens store.
    """
    data = open_zarr(path)
    return data[TOKENS_VARIABLE].values, dict(data.attrs)


def share_tokens(
    *,
    tokens: str,
    out: str,
    entry: dict,
    shard_rows: int,
    attrs: dict,
    model_dir: str | None = None,
) -> dict:
    """Rule share_tokens: a training checkpoint (key <model>@step<N>) measures its model's
    tokens, tokenized once per model, not per checkpoint: the same rows under its own key,
    with its own provenance (its weights' revision, step; `tokens_of`: the store copied), so
    the clean and ablation rules read them as any model's.

    Args:
        tokens: the model's tokens store (rule tokenize).
        out: the checkpoint's tokens store.
        entry: the checkpoint's model entry (selfrepair.config.checkpoint_models).
        shard_rows: rows per chunk, as tokenize writes them.
        attrs: the rule's provenance attributes (run_attrs of the checkpoint's key).
        model_dir: the rule's local weights input (a trained or local checkpoint), if any.

    Returns:
        The store's attributes.
    """
    # provenance only: stages.job (torch, TransformerLens) is not imported for it
    data = open_zarr(tokens).load()
    weights = checkpoint_folder(entry, model_dir)
    data.attrs = {**data.attrs, **weights_provenance(entry, weights, attrs, tokens_of=tokens)}
    write_zarr(data, out, chunks={"row": shard_rows})
    return data.attrs
