"""Text corpora: the documents a `corpus` config dict names, split into train / heldout /
measure by a stable hash, and their provenance.

Sources (the `corpus` dict of the config, dispatched by `documents`):
- "python_stdlib": an offline code-and-prose corpus, the Python standard library's own sources
  plus the prose of `pydoc_data/topics.py`, split by a stable hash into train / heldout / measure,
  so the demo model is never measured or evaluated on its training text;
- "hub": a Hugging Face dataset (the paper's `NeelNanda/pile-10k`, split train) or a local
  dataset folder that `datasets.load_dataset` reads (.jsonl, .parquet, ...): see `data.hub`;
- "text_files": plain text files (one document each) or .jsonl files (one document a line).
"""

from __future__ import annotations

import functools
import hashlib
import importlib.util
import json
import os
import platform
import sysconfig
from collections.abc import Iterable, Iterator
from pathlib import Path

from selfrepair.data.hub import hub_documents, resolve_hub_dataset

__all__ = [
    "SOURCES",
    "SPLITS",
    "corpus_provenance",
    "describe_corpus",
    "documents",
    "python_stdlib_documents",
    "split_of",
    "text_file_documents",
]

SPLITS = ("train", "heldout", "measure")
SOURCES = ("python_stdlib", "hub", "text_files")
# Path components never read from the standard library: its test suites, installed packages.
STDLIB_SKIP = {"test", "tests", "idle_test", "site-packages", "dist-packages", "__pycache__"}
TOPICS_FILE = "pydoc_data/topics.py"  # read as prose (its dict values), not as code


def split_of(key: str) -> str:
    """The split of a document, by sha1 of its key mod 20: 0 heldout, 1-4 measure, else train."""
    bucket = int(hashlib.sha1(key.encode("utf-8")).hexdigest(), 16) % 20
    return "heldout" if bucket == 0 else "measure" if bucket <= 4 else "train"


def _check_split(split: str) -> None:
    if split not in (*SPLITS, "all"):
        raise ValueError(f"unknown split {split!r}: choose one of {', '.join(SPLITS)} or all")


def _stdlib_root() -> Path:
    return Path(sysconfig.get_paths()["stdlib"])


@functools.lru_cache(maxsize=1)
def _stdlib_keys() -> tuple[tuple[str, str], ...]:
    """(key, kind) of every stdlib document in order: kind 'file' (key = relative path) or
    'topic' (key = pydoc_data/topics/<topic>). Sorted by key."""
    root = _stdlib_root()
    keys = []
    for path in root.rglob("*.py"):
        rel = path.relative_to(root)
        if STDLIB_SKIP.intersection(rel.parts[:-1]) or rel.as_posix() == TOPICS_FILE:
            continue
        keys.append((rel.as_posix(), "file"))
    keys.extend((f"pydoc_data/topics/{name}", "topic") for name in _pydoc_topics())
    return tuple(sorted(keys))


@functools.lru_cache(maxsize=1)
def _pydoc_topics() -> dict[str, str]:
    path = _stdlib_root() / TOPICS_FILE
    if not path.is_file():
        return {}
    spec = importlib.util.spec_from_file_location("_selfrepair_pydoc_topics", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return dict(module.topics)


def _stdlib_text(key: str, kind: str) -> str:
    if kind == "topic":
        return _pydoc_topics()[key.rsplit("/", 1)[1]]
    return (_stdlib_root() / key).read_bytes().decode("utf-8", errors="replace")


def python_stdlib_documents(split: str) -> Iterator[str]:
    """The Python standard library's .py sources (no test suites) and the pydoc topics' prose,
    in sorted order of path / topic key, restricted to one split ('train', 'heldout',
    'measure') or 'all'. Whitespace-only files are left out."""
    _check_split(split)
    for key, kind in _stdlib_keys():
        if split != "all" and split_of(key) != split:
            continue
        text = _stdlib_text(key, kind)
        if text.strip():
            yield text


@functools.lru_cache(maxsize=1)
def corpus_provenance() -> dict:
    """Where the python_stdlib corpus comes from and how large each split is."""
    counts = {s: {"documents": 0, "characters": 0} for s in SPLITS}
    for key, kind in _stdlib_keys():
        text = _stdlib_text(key, kind)
        if text.strip():
            count = counts[split_of(key)]
            count["documents"] += 1
            count["characters"] += len(text)
    return {
        "source": "python_stdlib",
        "python_version": platform.python_version(),
        "python_implementation": platform.python_implementation(),
        "stdlib_path": str(_stdlib_root()),
        "split_rule": "sha1(relative path or pydoc_data/topics/<topic>) % 20: "
        "0 heldout, 1-4 measure, 5-19 train",
        "splits": counts,
    }


def text_file_documents(paths: list[str]) -> Iterator[str]:
    """Documents from local files, in the order given: a .jsonl file gives one document a line
    (its 'text' field), any other file is one document. Every file must be UTF-8 text: a file
    that is not (Latin-1, binary) stops the job naming the file, the line and the fix, rather than
    being tokenized as replacement characters."""
    for path in paths:
        file = Path(path)
        if not file.is_file():
            raise FileNotFoundError(f"corpus file {path!r} does not exist: check corpus.files")
        if file.suffix == ".jsonl":
            yield from _jsonl_texts(path)
        else:
            # newlines as text-mode reading gives them (\r\n and \r become \n)
            text = _utf8_text(path, file.read_bytes())
            yield text.replace("\r\n", "\n").replace("\r", "\n")


NOT_TEXT_FIX = (
    "corpus.files takes UTF-8 text only: convert it (e.g. iconv -f latin1 -t utf-8) or remove it"
)


def _utf8_text(path: str, raw: bytes, line: int | None = None) -> str:
    """raw decoded as UTF-8; ValueError naming the file (and line) when it is not UTF-8 text.

    Args:
        path: the file, for the message.
        raw: its bytes (one line of a .jsonl file, or the whole file).
        line: the 1-based line of raw in the file, or None for a whole file.
    """
    where = f"{path}:{line}" if line is not None else path
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as err:
        if line is None:
            line = raw.count(b"\n", 0, err.start) + 1
            where = f"{path}:{line}"
        raise ValueError(
            f"corpus file {where} is not UTF-8 text (byte 0x{raw[err.start]:02x}); {NOT_TEXT_FIX}"
        ) from None
    if "\x00" in text:  # valid UTF-8 but binary: text files never hold NUL
        line = (line or 1) + text.count("\n", 0, text.index("\x00"))
        raise ValueError(
            f"corpus file {path}:{line} holds NUL bytes, so it is binary, not text; {NOT_TEXT_FIX}"
        )
    return text


def _jsonl_texts(path: str) -> Iterator[str]:
    """The 'text' field of every line of a .jsonl file; ValueError naming file:line otherwise."""
    with open(path, "rb") as lines:
        for number, raw in enumerate(lines, 1):
            line = _utf8_text(path, raw, number)
            if not line.strip():
                continue
            try:
                record = json.loads(line.rstrip("\r\n"))
            except json.JSONDecodeError as err:
                raise ValueError(
                    f"corpus file {path}:{number} is not JSON ({err.msg}, column {err.colno}): "
                    'each line of a .jsonl corpus file must be an object like {"text": "..."}'
                ) from None
            if not isinstance(record, dict) or not isinstance(record.get("text"), str):
                raise ValueError(
                    f"{path}:{number} has no string 'text' field: each line of a .jsonl "
                    'corpus file must be an object like {"text": "..."}'
                )
            yield record["text"]


def _hash_split(docs: Iterable[str], split: str) -> Iterator[str]:
    """The documents of one split, keyed by the sha1 of their text; 'all' keeps every one."""
    _check_split(split)
    for text in docs:
        if split == "all" or split_of(text) == split:
            yield text


def _split(corpus: dict, split_override: str | None) -> str:
    if split_override:
        return split_override
    if corpus.get("source", "python_stdlib") == "python_stdlib":
        return corpus.get("split") or "measure"
    return "all"


def documents(corpus: dict, split_override: str | None = None) -> Iterator[str]:
    """The documents a `corpus` config dict names.

    corpus = {"source": "python_stdlib" | "hub" | "text_files", "split": ...,
              "hub": {"path", "split", "text_column", "name"}, "files": [...]}

    Documents are split into 'train', 'heldout' and 'measure' by a stable hash (of the path for
    python_stdlib, of the text otherwise). `corpus["split"]` (default 'measure') selects a split
    of python_stdlib only: hub and text_files corpora give all their documents, in order, as the
    paper measures on all of pile-10k. `split_override` selects a split of any source (the
    demo training uses 'train' and 'heldout'). `hub.split` is the dataset's own split.

    Args:
        corpus: the config's corpus dict.
        split_override: 'train', 'heldout', 'measure' or 'all' instead of the default split.
    """
    source = corpus.get("source", "python_stdlib")
    split = _split(corpus, split_override)
    if source == "python_stdlib":
        return python_stdlib_documents(split)
    if source == "hub":
        hub = corpus.get("hub") or {}
        if not hub.get("path"):
            raise ValueError("corpus.source is hub but corpus.hub.path is not set")
        docs = hub_documents(
            hub["path"],
            hub.get("split") or "train",
            hub.get("text_column") or "text",
            hub.get("name"),
        )
        return _hash_split(docs, split)
    if source == "text_files":
        files = corpus.get("files") or []
        if not files:
            raise ValueError("corpus.source is text_files but corpus.files is empty")
        return _hash_split(text_file_documents([str(f) for f in files]), split)
    raise ValueError(f"unknown corpus source {source!r}: choose one of {', '.join(SOURCES)}")


def describe_corpus(corpus: dict, split_override: str | None = None) -> dict:
    """JSON-serialisable provenance of a corpus config, for the attributes of outputs."""
    source = corpus.get("source", "python_stdlib")
    split = _split(corpus, split_override)
    if source == "python_stdlib":
        return {**corpus_provenance(), "split": split}
    info: dict = {"source": source, "split": split}
    if source == "hub":
        import datasets

        hub = corpus.get("hub") or {}
        info["hub"] = {
            "path": hub.get("path"),
            "name": hub.get("name"),
            "split": hub.get("split") or "train",
            "text_column": hub.get("text_column") or "text",
        }
        if hub.get("path"):
            info["hub"].update(resolve_hub_dataset(hub["path"]))
        info["datasets_version"] = datasets.__version__
    elif source == "text_files":
        info["files"] = [
            {"path": str(f), "bytes": os.path.getsize(f)} if os.path.exists(f) else str(f)
            for f in corpus.get("files") or []
        ]
    if split != "all":
        info["split_rule"] = "sha1(document text) % 20: 0 heldout, 1-4 measure, 5-19 train"
    return info
