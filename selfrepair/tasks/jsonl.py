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

__all__ = ["FIELDS", "PromptLine", "file_prompts", "read_prompt_lines"]

FIELDS = ("prompt", "answer", "counterfactual", "corrupted")


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


def read_prompt_lines(path: str | Path) -> list[PromptLine]:
    """Every non-blank line of a prompts file, checked for its fields (TaskError naming
    file:line); at least two."""
    path = Path(path)
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as err:
        raise TaskError(f"{path}: cannot be read as UTF-8 text ({err})") from None
    out = [_line(f"{path}:{i}", t) for i, t in enumerate(lines, 1) if t.strip()]
    if len(out) < 2:
        raise TaskError(f"{path}: {len(out)} prompts; a task needs at least 2")
    return out


def _prompt(tokenizer: Any, line: PromptLine, bos_id: int) -> Prompt:
    try:
        ids = [bos_id, *encode(tokenizer, line.prompt)]
        answer = one_token(tokenizer, line.answer, "answer")
        counter = None
        if line.counterfactual is not None:
            counter = (one_token(tokenizer, line.counterfactual, "counterfactual"),)
        corrupted = None
        if line.corrupted is not None:
            corrupted = (bos_id, *encode(tokenizer, line.corrupted))
            if len(corrupted) != len(ids):
                raise TaskError(
                    f"the corrupted prompt is {len(corrupted) - 1} tokens but the prompt "
                    f"{len(ids) - 1}; make them the same length in tokens"
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


def file_prompts(tokenizer: Any, lines: list[PromptLine], bos_id: int) -> TaskPrompts:
    """The prompts of a file, tokenized with BOS first and right-padded.

    Args:
        tokenizer: the model's tokenizer (Hugging Face).
        lines: read_prompt_lines' result.
        bos_id: the id every row starts with.
    """
    prompts = [_prompt(tokenizer, line, bos_id) for line in lines]
    attrs = {
        "answer": "each line's answer",
        "counterfactuals": all(p.counter is not None for p in prompts),
        "corrupted_prompts": all(p.corrupted is not None for p in prompts),
    }
    return pad_prompts(prompts, bos_id, attrs)
