"""The demo tokenizer: a GPT-2 style byte-level BPE with one special token, `<|endoftext|>`,
serving as BOS, EOS, UNK and PAD (trained here, because no small pretrained one installs
offline). `byte_level_bpe` is also what tools/offline_hub.py builds its stand-in tokenizers
with. No torch: tokenizing jobs and the offline-hub tool import this without it.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable, Iterable
from pathlib import Path

__all__ = ["SPECIAL", "byte_level_bpe", "train_tokenizer", "write_dir_atomically"]

SPECIAL = "<|endoftext|>"


def _fresh_tmp(out: Path) -> Path:
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    if tmp.exists():
        shutil.rmtree(tmp)
    return tmp


def _replace_dir(tmp: Path, out: Path) -> None:
    if out.exists():
        shutil.rmtree(out) if out.is_dir() and not out.is_symlink() else out.unlink()
    os.replace(tmp, out)


def write_dir_atomically(out_dir, write: Callable[[Path], None]) -> None:
    """Call write(tmp) on a fresh temporary sibling of out_dir, then rename it into place (an
    interrupted job leaves no half-written folder under the output's name).

    Args:
        out_dir: the folder to (re)place; an existing one is replaced.
        write: fills the temporary folder it is given.
    """
    out = Path(out_dir)
    tmp = _fresh_tmp(out)
    try:
        write(tmp)
        _replace_dir(tmp, out)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)


def byte_level_bpe(
    documents: Iterable[str], vocab_size: int, specials: list[str], min_frequency: int
):
    """A GPT-2 style byte-level BPE (tokenizers' backend: GPT-2 pre-tokenizer, decoder and
    post-processor, all 256 bytes in the alphabet) of at most vocab_size tokens, the special
    tokens first, trained on documents.

    Args:
        documents: the training texts.
        vocab_size: tokens in all, specials and bytes included.
        specials: special tokens, given the first ids.
        min_frequency: a merge must occur this often.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    backend.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=min_frequency,
        special_tokens=specials,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    backend.train_from_iterator(documents, trainer=trainer)
    return backend


def train_tokenizer(documents: Iterable[str], vocab_size: int, out_dir):
    """A byte-level BPE of vocab_size tokens trained on documents, GPT-2 pre-tokenizer and
    decoder, one special token `<|endoftext|>` (id 0) serving as BOS, EOS, UNK and PAD.
    Saved with save_pretrained into out_dir (atomically) and returned as a fast tokenizer.

    Args:
        documents: the training texts.
        vocab_size: tokens in all (more than the 256 bytes and the special token).
        out_dir: the tokenizer folder to write.
    """
    from transformers import PreTrainedTokenizerFast

    if vocab_size < 257 + 1:
        raise ValueError(f"vocab_size must exceed 257 (256 bytes + {SPECIAL}), got {vocab_size}")
    backend = byte_level_bpe(documents, vocab_size, [SPECIAL], min_frequency=2)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        bos_token=SPECIAL,
        eos_token=SPECIAL,
        unk_token=SPECIAL,
        pad_token=SPECIAL,
        model_max_length=1 << 30,
    )
    write_dir_atomically(out_dir, lambda tmp: tokenizer.save_pretrained(str(tmp)))
    return tokenizer
