"""Prompts written by the user: a JSONL file, one object a line,
{"prompt": ..., "answer": ..., "counterfactual": ... (optional), "corrupted": ... (optional)}.
The answer (and counterfactual) must be one token of the model's tokenizer, mind its leading
space (" Paris"); the corrupted prompt, when given, must be as many tokens as the prompt. Every
problem names the file and line."""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

from selfrepair.tasks.prompts import Prompt, TaskError, TaskPrompts, encode, one_token, pad_prompts

__all__ = [
    "FIELDS",
    "PromptFile",
    "PromptLine",
    "bad_lines",
    "count_prompts",
    "file_prompts",
    "missing_file",
    "prompt_file",
    "read_prompt_lines",
]

FIELDS = ("prompt", "answer", "counterfactual", "corrupted")
# The bad lines one error lists (the count says how many more).
MAX_LISTED = 50


@dataclass(frozen=True)
class PromptLine:
    """One line of a prompts file."""

    where: str  # file:line
    prompt: str
    answer: str
    counterfactual: str | None = None
    corrupted: str | None = None


def _line(where: str, text: str) -> PromptLine:
    try:
        record = json.loads(text)
    except json.JSONDecodeError as err:
        raise TaskError(f"{where}: not a JSON object ({err.msg})") from None
    return _record(where, record)


def _record(where: str, record: Any) -> PromptLine:
    if not isinstance(record, dict):
        raise TaskError(f"{where}: not a JSON object")
    if unknown := sorted(set(record) - set(FIELDS)):
        raise TaskError(f"{where}: unknown field {unknown[0]!r}; the fields are {FIELDS}")
    for name in ("prompt", "answer"):
        if not isinstance(record.get(name), str) or not record[name]:
            raise TaskError(f'{where}: no "{name}" (a non-empty string); every line needs one')
    for name in ("counterfactual", "corrupted"):
        if name in record and (not isinstance(record[name], str) or not record[name]):
            raise TaskError(f'{where}: "{name}" must be a non-empty string')
    return PromptLine(where=where, **record)


def _all_records(texts: list[str]) -> list[Any] | None:
    """Every line's JSON value in one parse (as one JSON array: a 400k-line file in about a
    second, not thirty), or None when that does not give one value a line; the caller then
    parses line by line to name each bad one."""
    try:
        records = json.loads("[" + ",".join(texts) + "]")
    except ValueError:
        return None
    return records if len(records) == len(texts) else None


def missing_file(path: str | Path) -> str | None:
    """Why a prompts file cannot be opened (it does not exist, or is a folder), naming the
    folder a relative path is read from; None when it is a file."""
    path = Path(path)
    if path.is_file():
        return None
    what = "is a folder, not a file" if path.is_dir() else "does not exist"
    where = "" if path.is_absolute() else f" (a relative path is read from {Path.cwd()})"
    return f"{path}: the prompts file {what}{where}; give its path"


def count_prompts(path: str | Path) -> int:
    """The non-blank lines of a file, counted without parsing them (a task's size before any
    job; missing_file first)."""
    with Path(path).open("rb") as handle:
        return sum(1 for line in handle if line.strip())


def bad_lines(path: str | Path, problems: list[str], n_lines: int) -> TaskError:
    """One error for every bad line of a file (each problem starts with its file:line), the
    first MAX_LISTED listed."""
    listed = problems[:MAX_LISTED]
    more = len(problems) - len(listed)
    tail = [f"  ... and {more} more"] if more else []
    return TaskError(
        f"{path}: {len(problems)} of {n_lines} prompts cannot be used; fix every line below:\n"
        + "\n".join([*(f"  {p}" for p in listed), *tail])
    )


def _parse(path: Path) -> tuple[list[tuple[int, str]], list[Any] | None]:
    """(line number, text) of every non-blank line and their JSON values in one parse (None:
    some line is not one JSON value); TaskError when the file cannot be read."""
    if problem := missing_file(path):
        raise TaskError(problem)
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as err:
        raise TaskError(f"{path}: cannot be read as UTF-8 text ({err})") from None
    numbered = [(i, text) for i, text in enumerate(lines, 1) if text.strip()]
    return numbered, _all_records([text for _, text in numbered])


def read_prompt_lines(path: str | Path) -> list[PromptLine]:
    """Every non-blank line of a prompts file, checked for its fields (one TaskError naming
    every bad file:line); at least two."""
    path = Path(path)
    numbered, records = _parse(path)
    out, problems = [], []
    for k, (i, text) in enumerate(numbered):
        where = f"{path}:{i}"
        try:
            out.append(_line(where, text) if records is None else _record(where, records[k]))
        except TaskError as err:
            problems.append(str(err))
    if problems:
        raise bad_lines(path, problems, len(out) + len(problems))
    if len(out) < 2:
        raise TaskError(f"{path}: {len(out)} prompts; a task needs at least 2")
    return out


@dataclass(frozen=True)
class PromptFile:
    """What the config checks and the storage estimate need of a prompts file, before any
    tokenizer: how many prompts, whether every line has a counterfactual and a corrupted
    prompt, and the longest prompt in UTF-8 bytes (a bound on its tokens: a byte-level BPE
    token is at least one byte; SentencePiece may add one, a leading '▁')."""

    n_prompts: int
    counterfactuals: bool
    corrupted: bool
    longest_bytes: int


def _good(record: Any) -> bool:
    """Whether a line's value is a prompt line (_record's checks, without building one)."""
    if type(record) is not dict or not record.keys() <= _FIELDS:
        return False
    prompt, answer = record.get("prompt"), record.get("answer")
    if type(prompt) is not str or not prompt or type(answer) is not str or not answer:
        return False
    if len(record) == 2:
        return True
    counter, corrupted = record.get("counterfactual", "-"), record.get("corrupted", "-")
    return type(counter) is str and counter != "" and type(corrupted) is str and corrupted != ""


_FIELDS = frozenset(FIELDS)


@cache
def _prompt_file(path: str, mtime_ns: int, size: int) -> PromptFile:
    numbered, records = _parse(Path(path))
    if records is None or not all(map(_good, records)) or len(records) < 2:
        read_prompt_lines(path)  # raises, naming every bad line
    # Each optional field counts only when every line has it (a JSONL record's keys, not kinds).
    has = {name: all(name in r for r in records) for name in FIELDS[2:]}
    return PromptFile(
        n_prompts=len(records),
        counterfactuals=has["counterfactual"],
        corrupted=has["corrupted"],
        longest_bytes=max(len(r["prompt"].encode("utf-8")) for r in records),
    )


def prompt_file(path: str | Path) -> PromptFile:
    """A prompts file's PromptFile, every line checked as read_prompt_lines checks it (the same
    TaskError) at a fraction of its cost; the same file unchanged is read once per process
    (the config check at parse time, the storage estimate at the start).

    Args:
        path: the prompts file.
    """
    if problem := missing_file(path):
        raise TaskError(problem)
    stat = Path(path).stat()
    return _prompt_file(str(path), stat.st_mtime_ns, stat.st_size)


def _pieces(tokenizer: Any, ids: list[int] | tuple[int, ...]) -> str:
    """The tokens of ids as the tokenizer splits them: 'a' | ' b'."""
    return " | ".join(repr(tokenizer.decode([i])) for i in ids)


def _prompt(tokenizer: Any, line: PromptLine, bos_id: int, n_ctx: int | None) -> Prompt:
    try:
        ids = [bos_id, *encode(tokenizer, line.prompt)]
        answer = one_token(tokenizer, line.answer, "answer")
        if n_ctx is not None and len(ids) > n_ctx:
            raise TaskError(
                f"the prompt is {len(ids) - 1} tokens (with BOS {len(ids)}), more than the "
                f"model's context of {n_ctx} positions; shorten it to at most {n_ctx - 1} "
                "tokens or drop the line"
            )
        counter = None
        if line.counterfactual is not None:
            counter = (one_token(tokenizer, line.counterfactual, "counterfactual"),)
        corrupted = None
        if line.corrupted is not None:
            corrupted = (bos_id, *encode(tokenizer, line.corrupted))
            if len(corrupted) != len(ids):
                raise TaskError(
                    f"the corrupted prompt is {len(corrupted) - 1} tokens "
                    f"({_pieces(tokenizer, corrupted[1:])}) but the prompt {len(ids) - 1} "
                    f"({_pieces(tokenizer, ids[1:])}); make them the same length in tokens"
                )
    except TaskError as err:
        raise TaskError(f"{line.where}: {err}") from None
    return Prompt(
        ids=tuple(ids),
        answers=((len(ids) - 1, answer),),
        counter=counter,
        corrupted=corrupted,
        tail=(answer,),
        text=line.prompt,
    )


def file_prompts(
    tokenizer: Any, lines: list[PromptLine], bos_id: int, n_ctx: int | None = None
) -> TaskPrompts:
    """The prompts of a file, tokenized with BOS first and right-padded; every line checked
    (one TaskError naming each bad file:line with its tokens).

    Args:
        tokenizer: the model's tokenizer (Hugging Face).
        lines: read_prompt_lines' result.
        bos_id: the id every row starts with.
        n_ctx: the model's context in positions, when known: a longer prompt is refused.
    """
    prompts, problems = [], []
    for line in lines:
        try:
            prompts.append(_prompt(tokenizer, line, bos_id, n_ctx))
        except TaskError as err:
            problems.append(str(err))
    if problems:
        raise bad_lines(lines[0].where.rsplit(":", 1)[0], problems, len(lines))
    attrs = {
        "answer": "each line's answer",
        "counterfactuals": all(p.counter is not None for p in prompts),
        "corrupted_prompts": all(p.corrupted is not None for p in prompts),
    }
    return pad_prompts(prompts, bos_id, attrs)
