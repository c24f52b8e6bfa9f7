"""Prompts written by the user: a JSONL file, one object a line,
{"prompt": ..., "answer": ..., "counterfactual": ... (optional), "corrupted": ... (optional)}.
The answer (and counterfactual) must be one token of the model's tokenizer, mind its leading
space (" Paris"); the corrupted prompt, when given, must be as many tokens as the prompt. Every
problem names the file and line."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from selfrepair.tasks.prompts import Prompt, TaskError, TaskPrompts, encode, one_token, pad_prompts

__all__ = [
    "FIELDS",
    "PromptLine",
    "bad_lines",
    "count_prompts",
    "file_prompts",
    "missing_file",
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


def read_prompt_lines(path: str | Path) -> list[PromptLine]:
    """Every non-blank line of a prompts file, checked for its fields (one TaskError naming
    every bad file:line); at least two."""
    path = Path(path)
    if problem := missing_file(path):
        raise TaskError(problem)
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as err:
        raise TaskError(f"{path}: cannot be read as UTF-8 text ({err})") from None
    out, problems = [], []
    for i, text in enumerate(lines, 1):
        if text.strip():
            try:
                out.append(_line(f"{path}:{i}", text))
            except TaskError as err:
                problems.append(str(err))
    if problems:
        raise bad_lines(path, problems, len(out) + len(problems))
    if len(out) < 2:
        raise TaskError(f"{path}: {len(out)} prompts; a task needs at least 2")
    return out


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
