"""Rows of tokens, packed as the paper (and TransformerLens' `tokenize_and_concatenate`) does:
documents tokenized without special tokens, joined by EOS into one stream, cut into pieces of
seq_len - 1 tokens, each row starting with BOS. Also the tokenizer of a model config and its
special ids. Computation only: `stages.data` writes and reads the tokens store.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np

__all__ = ["TOKENS_VARIABLE", "load_tokenizer", "pack_rows", "special_ids"]

TOKENS_VARIABLE = "tokens"  # the variable of the tokens store (dims row, tok)


def _encode(tokenizer, texts: list[str]) -> list[list[int]]:
    """Batched fast encoding, no special tokens, no too-long-sequence warnings."""
    return tokenizer(texts, add_special_tokens=False, return_attention_mask=False, verbose=False)[
        "input_ids"
    ]


def _batches(docs: Iterable[str], max_docs: int = 64, max_chars: int = 1 << 21):
    batch: list[str] = []
    chars = 0
    for text in docs:
        batch.append(text)
        chars += len(text)
        if len(batch) >= max_docs or chars >= max_chars:
            yield batch
            batch, chars = [], 0
    if batch:
        yield batch


def pack_rows(
    documents: Iterable[str],
    tokenizer,
    seq_len: int,
    n_rows: int | None,
    bos_id: int,
    eos_id: int,
) -> np.ndarray:
    """Rows [n_rows, seq_len] (int32), each BOS followed by the next seq_len - 1 tokens of the
    stream doc_0 EOS doc_1 EOS doc_2 ... (documents tokenized without special tokens).

    Documents are read and tokenized in batches only until n_rows rows are full. n_rows=None
    packs every complete row the documents give (the incomplete tail is dropped). Too few
    tokens for n_rows rows raise ValueError.

    Args:
        documents: the texts, in stream order.
        tokenizer: a Hugging Face (fast) tokenizer.
        seq_len: tokens per row, BOS included.
        n_rows: rows to fill, or None for every complete row.
        bos_id: the id each row starts with.
        eos_id: the id between documents.
    """
    if seq_len < 2:
        raise ValueError(f"seq_len must be at least 2 (BOS and one token), got {seq_len}")
    if n_rows is not None and n_rows < 1:
        raise ValueError(f"n_rows must be positive, got {n_rows}")
    piece = seq_len - 1
    need = None if n_rows is None else n_rows * piece
    chunks: list[np.ndarray] = []
    have = 0
    first = True
    eos = np.array([eos_id], dtype=np.int64)
    for batch in _batches(documents):
        for ids in _encode(tokenizer, batch):
            if not first:
                chunks.append(eos)
                have += 1
            first = False
            chunks.append(np.asarray(ids, dtype=np.int64))
            have += len(ids)
            if need is not None and have >= need:
                break
        if need is not None and have >= need:
            break
    if need is None:
        need = (have // piece) * piece
        if need == 0:
            raise ValueError(
                f"the corpus gave {have} tokens, fewer than one row of {seq_len} tokens needs "
                f"({piece} after BOS): give a larger corpus"
            )
    elif have < need:
        raise ValueError(
            f"the corpus gave {have} tokens but {n_rows} rows of {seq_len} tokens need {need} "
            f"({piece} per row after BOS): lower data.n_tokens or give a larger corpus"
        )
    stream = np.concatenate(chunks)[:need] if chunks else np.zeros(0, dtype=np.int64)
    if stream.size and (stream.min() < 0 or stream.max() > np.iinfo(np.int32).max):
        raise ValueError("token ids do not fit in int32")
    body = stream.reshape(-1, piece)
    rows = np.empty((body.shape[0], seq_len), dtype=np.int32)
    rows[:, 0] = bos_id
    rows[:, 1:] = body
    return rows


def special_ids(tokenizer) -> tuple[int, int]:
    """(bos_id, eos_id) of a tokenizer; a tokenizer without BOS uses its EOS (as GPT-2 does)."""
    eos = tokenizer.eos_token_id
    bos = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else eos
    if bos is None or eos is None:
        raise ValueError(
            f"tokenizer {getattr(tokenizer, 'name_or_path', '')!r} has neither BOS nor EOS: "
            "rows need both (documents are joined by EOS, rows start with BOS)"
        )
    return int(bos), int(eos)


def load_tokenizer(model: dict, directory: str | None = None):
    """The tokenizer of a model config {name, path}: from `directory` (a tokenizer or checkpoint
    folder) when given, else from the model's local `path`, else the Hugging Face name that
    TransformerLens uses for `name` (e.g. pythia-160m -> EleutherAI/pythia-160m).

    Args:
        model: the model's config entry ({name, path, ...}).
        directory: a tokenizer or checkpoint folder that takes precedence.

    Returns:
        (tokenizer, where it was loaded from): a folder that the `tokenizers` library reads as
        AutoTokenizer does is read without transformers and torch (data.tokenizer_file).
    """
    from selfrepair.data.tokenizer_file import direct_tokenizer

    folder = directory or model.get("path")
    if folder and (direct := direct_tokenizer(folder)) is not None:
        return direct, str(folder)
    from transformers import AutoTokenizer

    if folder:
        return AutoTokenizer.from_pretrained(str(folder)), str(folder)
    from selfrepair.catalogue import official_model_name

    official = official_model_name(model["name"])  # unknown names fail naming the fix
    return AutoTokenizer.from_pretrained(official), official
