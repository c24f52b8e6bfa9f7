"""The files a config names, as inputs of the rules that read them: a prompts task's JSONL file,
a `path` model's folder (every file in it: Snakemake tracks a folder by its own mtime, which
editing a file inside leaves alone), a text-file corpus's files. Editing any of them makes the
rules that read it rerun. Also what a `path` folder's tokenizer needs, checked at parse time.
Pure path listing, no heavy imports."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from selfrepair.config.errors import ConfigError

__all__ = [
    "TOKENIZER_FILES",
    "check_path_tokenizers",
    "corpus_files",
    "folder_files",
    "model_folder_files",
    "task_files",
    "tokenizer_problem",
]

# What AutoTokenizer.from_pretrained loads a tokenizer from (any one set): the fast tokenizer's
# tokenizer.json, a byte-level BPE's vocab.json and merges.txt (GPT-2), a SentencePiece model
# (Llama). tokenizer.save_pretrained(folder) writes the first.
TOKENIZER_FILES = (("tokenizer.json",), ("vocab.json", "merges.txt"), ("tokenizer.model",))


def folder_files(folder: str | Path) -> list[str]:
    """Every file under a folder, sorted, as paths beside the folder's own spelling; hidden
    files and folders (.git, .cache) left out. Empty when the folder does not exist."""
    out = []
    for root, dirs, files in os.walk(folder):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        out += [os.path.join(root, f) for f in sorted(files) if not f.startswith(".")]
    return out


def task_files(spec: dict[str, Any]) -> list[str]:
    """The files a task reads: a prompts task's JSONL file."""
    return [spec["file"]] if spec["type"] == "prompts" and spec.get("file") else []


def corpus_files(corpus: dict[str, Any]) -> list[str]:
    """The files a corpus reads: a text_files corpus's files."""
    if corpus.get("source") != "text_files":
        return []
    return [str(f) for f in corpus.get("files") or []]


def model_folder_files(entry: dict[str, Any]) -> list[str]:
    """The files of a model's folder given by the config (`path`, or a checkpoint's `path`),
    which no rule writes; a trained model's folder is a rule's output, tracked as such."""
    folder = entry["checkpoint"].get("path") if "checkpoint" in entry else entry.get("path")
    return folder_files(folder) if folder else []


def tokenizer_problem(folder: str | Path) -> str | None:
    """What a model folder lacks to load its tokenizer (None when it has one of TOKENIZER_FILES).

    Args:
        folder: a `path` model's folder.
    """
    root = Path(folder)
    if any(all((root / name).is_file() for name in names) for names in TOKENIZER_FILES):
        return None
    present = [n for names in TOKENIZER_FILES for n in names if (root / n).is_file()]
    has = f" (it has only {', '.join(present)})" if present else ""
    return (
        f"has no tokenizer files{has}: it needs tokenizer.json, or vocab.json with merges.txt, "
        "or tokenizer.model, with tokenizer_config.json; save the model's tokenizer there "
        "(tokenizer.save_pretrained(folder))"
    )


def check_path_tokenizers(entries: dict[str, dict[str, Any]]) -> None:
    """Every `path` model's folder holds its tokenizer (the workflow reads it from there).

    Args:
        entries: the model entries by name (model_entries).
    """
    for name, entry in entries.items():
        folder = entry.get("path")
        if folder and Path(folder).is_dir() and (problem := tokenizer_problem(folder)):
            raise ConfigError(f"config key models[{name}].path: {folder!r} {problem}")
