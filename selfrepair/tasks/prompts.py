"""A task as data: token rows the engine measures as it measures running text (position t
predicts token t + 1), one per prompt with its answer after it, right-padded to one length, and
which positions are scored (the answer's), with the counterfactual token there and each prompt's
corrupted partner of the same length. With right padding and causal attention no real position
sees a pad, so the rows need no attention mask; every reduction uses the scored (or real)
positions only. No I/O: stages.tasks writes and reads the prompts store."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

__all__ = ["Prompt", "TaskError", "TaskPrompts", "encode", "one_token", "pad_prompts"]


class TaskError(ValueError):
    """A task its tokenizer or file cannot make: one line naming what and the fix (the config
    checks prefix the key or file:line)."""


@dataclass(frozen=True)
class Prompt:
    """One prompt as token ids: BOS first, then the text; the row is `ids` + the answer.

    Attributes:
        ids: the prompt's token ids (BOS first).
        answers: the scored positions of the row and the answer token there (position t
            predicts row[t + 1]); for a prompt with one answer, its last position.
        counter: the counterfactual token at each answer (or None: no counterfactual).
        corrupted: the corrupted prompt's ids (same length as ids), or None.
        tail: ids after the prompt (the answer, then anything more the row holds).
        baseline: positions whose loss the caption compares with the answers' (induction: the
            first copy predicting the tokens the repeat predicts), or none.
        text: the prompt's text, for readers.
        info: integers a task records per prompt (IOI: its template, order and the positions
            of the names).
    """

    ids: tuple[int, ...]
    answers: tuple[tuple[int, int], ...]
    counter: tuple[int, ...] | None
    corrupted: tuple[int, ...] | None
    tail: tuple[int, ...]
    baseline: tuple[int, ...] = ()
    text: str = ""
    info: dict[str, int] = field(default_factory=dict)

    @property
    def row(self) -> tuple[int, ...]:
        return self.ids + self.tail


@dataclass
class TaskPrompts:
    """A task's padded rows: what the engine and the reductions need.

    Attributes:
        tokens: [prompt, tok] int32, each prompt and its answer(s), right-padded with pad_id.
        corrupted: [prompt, tok] int32, each prompt's corrupted partner (the prompt itself when
            it has none), padded alike.
        scored: [prompt, pos] bool, the answer positions (pos = tok - 1).
        counter: [prompt, pos] int32, the counterfactual token at each answer (the answer
            itself where there is none).
        baseline: [prompt, pos] bool, positions compared with the answers (loss).
        length: [prompt] int32, real tokens of each row.
        text: the prompts' texts.
        attrs: what made them (task type, tokenizer, names used, ...).
        info: per-prompt integers of the task ([prompt] arrays, Prompt.info).
    """

    tokens: np.ndarray
    corrupted: np.ndarray
    scored: np.ndarray
    counter: np.ndarray
    baseline: np.ndarray
    length: np.ndarray
    text: list[str]
    attrs: dict[str, Any] = field(default_factory=dict)
    info: dict[str, np.ndarray] = field(default_factory=dict)

    @property
    def real(self) -> np.ndarray:
        """bool [prompt, tok]: the positions that are not padding."""
        return np.arange(self.tokens.shape[1])[None, :] < self.length[:, None]

    @property
    def groups(self) -> np.ndarray:
        """int64 [prompt]: each prompt's template group, numbered 0 .. G - 1 in the order of
        (template, abba): Wang et al.'s ABBA and BABA forms of a template are two templates
        (their IOIDataset's groups). A task whose prompts record no template is one group."""
        keys = [self.info[k] for k in ("template", "abba") if k in self.info]
        if not keys:
            return np.zeros(len(self.tokens), np.int64)
        _, groups = np.unique(np.stack(keys, 1), axis=0, return_inverse=True)
        return groups.reshape(-1).astype(np.int64)


def encode(tokenizer: Any, text: str) -> list[int]:
    """Token ids of text, no special tokens."""
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


def one_token(tokenizer: Any, text: str, what: str) -> int:
    """The id of text when it is one token, else TaskError naming `what` and its pieces."""
    ids = encode(tokenizer, text)
    if len(ids) != 1:
        pieces = ", ".join(repr(tokenizer.decode([i])) for i in ids)
        raise TaskError(
            f"{what} {text!r} is {len(ids)} tokens ({pieces or 'none'}) for this tokenizer; "
            "give one that is a single token (e.g. with its leading space)"
        )
    return ids[0]


def pad_prompts(prompts: Sequence[Prompt], pad_id: int, attrs: dict[str, Any]) -> TaskPrompts:
    """Right-pad the prompts' rows to the longest into a TaskPrompts.

    Args:
        prompts: the task's prompts, at least two.
        pad_id: the id padding takes (any valid id: no real position ever reads it).
        attrs: what made the prompts.
    """
    if len(prompts) < 2:
        raise TaskError(f"a task needs at least 2 prompts, got {len(prompts)}")
    n, width = len(prompts), max(len(p.row) for p in prompts)
    tokens = np.full((n, width), pad_id, np.int32)
    corrupted = np.full((n, width), pad_id, np.int32)
    scored = np.zeros((n, width - 1), bool)
    baseline = np.zeros((n, width - 1), bool)
    length = np.array([len(p.row) for p in prompts], np.int32)
    for i, p in enumerate(prompts):
        tokens[i, : len(p.row)] = p.row
        partner = p.ids if p.corrupted is None else p.corrupted
        if len(partner) != len(p.ids):
            raise TaskError(
                f"prompt {i}'s corrupted prompt is {len(partner)} tokens, not {len(p.ids)} as "
                "the prompt: make them the same length"
            )
        corrupted[i, : len(p.row)] = partner + p.tail
        for pos, answer in p.answers:
            if tokens[i, pos + 1] != answer:
                raise TaskError(f"prompt {i}: position {pos} does not predict its answer")
            scored[i, pos] = True
        baseline[i, list(p.baseline)] = True
    counter = tokens[:, 1:].copy()
    for i, p in enumerate(prompts):
        if p.counter is not None:
            counter[i, [pos for pos, _ in p.answers]] = p.counter
    return TaskPrompts(
        tokens=tokens,
        corrupted=corrupted,
        scored=scored,
        counter=counter,
        baseline=baseline,
        length=length,
        text=[p.text for p in prompts],
        attrs=dict(attrs),
        info={k: np.array([p.info[k] for p in prompts], np.int32) for k in prompts[0].info},
    )
