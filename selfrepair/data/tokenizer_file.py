"""A tokenizer folder read with the `tokenizers` library alone, for the jobs that only tokenize
(tokenize, task_prompts, the explorers): `transformers.AutoTokenizer` imports torch and much of
transformers, seconds per job, for the same Rust tokenizer.

Only folders where the two are the same tokenizer are read this way (`direct_tokenizer`): a
`tokenizer.json` with a plain fast-tokenizer class in `tokenizer_config.json` (the demo's trained
tokenizers), no truncation or padding, every named special token already among its added tokens
(transformers would add the missing ones), and nothing else in the config that transformers
would act on. Every other folder, and every hub name, goes through AutoTokenizer as before.
The jobs use a few calls only: encoding without special tokens, decoding, the special ids and
the vocabulary size, which `FileTokenizer` computes as transformers does.
"""

from __future__ import annotations

import json
from pathlib import Path

__all__ = ["FileTokenizer", "direct_tokenizer", "why_not_direct"]

CLASSES = ("TokenizersBackend", "PreTrainedTokenizerFast")
NAMED = ("bos_token", "eos_token", "unk_token", "sep_token", "pad_token", "cls_token", "mask_token")
# Keys transformers only stores (or that have their default value here).
PASSIVE = {"backend", "is_local", "local_files_only", "model_max_length", "tokenizer_class"}
MAX_VOCAB = 100_000  # above, transformers may patch the pre-tokenizer's regex (Mistral's)


def _token(value) -> str | None:
    """A special token of tokenizer_config.json: a string or an AddedToken dict."""
    return value.get("content") if isinstance(value, dict) else value


def why_not_direct(folder: str | Path) -> str | None:
    """Why AutoTokenizer could differ from the `tokenizers` library on this folder, or None."""
    folder = Path(folder)
    spec, config = folder / "tokenizer.json", folder / "tokenizer_config.json"
    if not (spec.is_file() and config.is_file()):
        return "no tokenizer.json with tokenizer_config.json"
    cfg = json.loads(config.read_text())
    if cfg.get("tokenizer_class") not in CLASSES:
        return f"tokenizer class {cfg.get('tokenizer_class')!r}"
    if cfg.get("clean_up_tokenization_spaces"):
        return "clean_up_tokenization_spaces"
    if other := sorted(set(cfg) - PASSIVE - set(NAMED)):
        return f"config keys {', '.join(other)}"
    tok = json.loads(spec.read_text())
    if tok.get("truncation") is not None or tok.get("padding") is not None:
        return "truncation or padding in tokenizer.json"
    added = {t["content"] for t in tok.get("added_tokens", []) if t.get("special")}
    missing = [_token(cfg[k]) for k in NAMED if cfg.get(k) and _token(cfg[k]) not in added]
    if missing:
        return f"special tokens {missing} not among the added tokens"
    return None


class FileTokenizer:
    """The calls the tokenizing jobs make of a Hugging Face fast tokenizer, on the `tokenizers`
    object it wraps, with transformers' results (add_special_tokens=False only)."""

    def __init__(self, folder: str | Path):
        from tokenizers import Tokenizer

        folder = Path(folder)
        self.name_or_path = str(folder)
        self.backend = Tokenizer.from_file(str(folder / "tokenizer.json"))
        cfg = json.loads((folder / "tokenizer_config.json").read_text())
        self._named = {k[: -len("_token")]: _token(cfg[k]) for k in NAMED if cfg.get(k)}
        if self.backend.get_vocab_size() > MAX_VOCAB:
            raise ValueError(f"{folder}: more than {MAX_VOCAB} tokens, use AutoTokenizer")

    def _id(self, kind: str) -> int | None:
        token = self._named.get(kind)
        return None if token is None else self.backend.token_to_id(token)

    @property
    def bos_token_id(self) -> int | None:
        return self._id("bos")

    @property
    def eos_token_id(self) -> int | None:
        return self._id("eos")

    @property
    def all_special_ids(self) -> list[int]:
        """The named special tokens' ids, each token once, in transformers' order."""
        tokens = dict.fromkeys(self._named.values())  # NAMED's order, duplicates once
        return [self.backend.token_to_id(t) for t in tokens]

    def __len__(self) -> int:
        return self.backend.get_vocab_size(with_added_tokens=True)

    def __call__(self, text, add_special_tokens: bool = True, **_ignored) -> dict:
        """{"input_ids": ids} of one text or a list of texts; special tokens must be off."""
        if add_special_tokens:
            raise ValueError("FileTokenizer encodes without special tokens only")
        if isinstance(text, str):
            return {"input_ids": self.backend.encode(text, add_special_tokens=False).ids}
        found = self.backend.encode_batch(list(text), add_special_tokens=False)
        return {"input_ids": [e.ids for e in found]}

    def decode(self, ids, skip_special_tokens: bool = False) -> str:
        ids = [ids] if isinstance(ids, int) else list(ids)
        return self.backend.decode(ids, skip_special_tokens=skip_special_tokens)


def direct_tokenizer(folder: str | Path) -> FileTokenizer | None:
    """The folder's tokenizer through the `tokenizers` library, or None where AutoTokenizer
    could read it differently (why_not_direct)."""
    if why_not_direct(folder) is not None:
        return None
    try:
        return FileTokenizer(folder)
    except ValueError:
        return None
