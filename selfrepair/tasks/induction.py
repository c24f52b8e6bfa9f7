"""Induction (Olsson et al. 2022): BOS, a random token sequence, the same sequence again. From
the second token of the repeat on, each next token can be copied from the first copy: those
positions are scored, their answers the repeated tokens. The corrupted prompt is a fresh random
sequence repeated the same way. The first copy's predictions of the same tokens are the loss
baseline (a model that copies predicts the repeat far better than the first copy)."""

from __future__ import annotations

from typing import Any

import numpy as np

from selfrepair.tasks.picks import largest_heads
from selfrepair.tasks.prompts import Prompt, TaskError, TaskPrompts, pad_prompts

__all__ = [
    "induction_prompt",
    "induction_heads",
    "strongest_induction_heads",
    "induction_prompts",
    "prefix_matching_score",
    "vocabulary_ids",
]


def vocabulary_ids(tokenizer: Any) -> np.ndarray:
    """Every id of the tokenizer but its special tokens, sorted."""
    special = set(tokenizer.all_special_ids)
    return np.array([i for i in range(len(tokenizer)) if i not in special], np.int64)


def induction_prompt(sequence: list[int], other: list[int], bos_id: int) -> Prompt:
    """BOS + sequence + sequence (rows of 2 L + 1 tokens), scored at positions L + 1 .. 2 L - 1;
    corrupted: BOS + other + other."""
    n = len(sequence)
    row = [bos_id, *sequence, *sequence]
    answers = tuple((pos, row[pos + 1]) for pos in range(n + 1, 2 * n))
    return Prompt(
        ids=tuple(row[:-1]),
        answers=answers,
        counter=None,
        corrupted=(bos_id, *other, *other[:-1]),
        tail=(row[-1],),
        baseline=tuple(range(1, n)),
        info={"length": n},
    )


def induction_prompts(tokenizer: Any, n: int, length: int, seed: int, bos_id: int) -> TaskPrompts:
    """n repeated random sequences of `length` distinct tokens (drawn with `seed` from every
    non-special id, so that each token of a sequence has one successor), with their corrupted
    partners.

    Args:
        tokenizer: the model's tokenizer (Hugging Face).
        n: prompts.
        length: tokens of the random sequence (the row: 2 * length + 1 tokens).
        seed: the run's seed.
        bos_id: the id every row starts with.
    """
    ids = vocabulary_ids(tokenizer)
    if len(ids) < 2 * length:
        raise TaskError(
            f"the tokenizer has {len(ids)} ordinary tokens, fewer than the {2 * length} two "
            "sequences of length distinct tokens need; lower length"
        )
    rng = np.random.default_rng(seed)
    prompts = []
    for _ in range(n):
        drawn = rng.choice(ids, 2 * length, replace=False).tolist()
        prompts.append(induction_prompt(drawn[:length], drawn[length:], bos_id))
    attrs = {
        "answer": "each token of the repeat, copied from the first copy",
        "corrupted_prompts": "a fresh random sequence repeated the same way",
        "baseline": "the first copy predicting the same tokens",
        "sequence_tokens": f"{len(ids)} non-special ids of the tokenizer, uniformly",
    }
    return pad_prompts(prompts, bos_id, attrs)


def prefix_matching_score(pattern: np.ndarray, length: int) -> np.ndarray:
    """Each head's induction (prefix-matching) score, Olsson et al. 2022: its mean attention,
    from each token of the repeat, to the token after that token's first occurrence (position
    q attends to q - length + 1), over the repeat's positions length + 1 .. 2 length - 1 (the
    scored ones; the repeat's last token is not in the row) and the prompts. Clean attention
    only: it names the heads that copy without ablating any.

    Args:
        pattern: [prompt, layer, head, query, key] attention probabilities on rows of BOS and a
            sequence of `length` tokens twice (induction_prompt's), at least 2 length wide.
        length: the repeated sequence's tokens.
    """
    if pattern.shape[-2] < 2 * length or length < 2:
        raise ValueError(f"rows of {pattern.shape[-2]} positions hold no repeat of {length} tokens")
    query = np.arange(length + 1, 2 * length)
    return pattern[..., query, query - length + 1].mean(axis=(0, -1))


def induction_heads(scores, above: float) -> list[list[int]]:
    """[[layer, head], ...] of the heads whose induction score (prefix_matching_score's
    [layer, head] values) is above `above`, in layer then head order."""
    layer, head = np.nonzero(np.asarray(scores, dtype=float) > above)
    return [[int(a), int(b)] for a, b in zip(layer, head, strict=True)]


def strongest_induction_heads(scores, k: int) -> list[list[int]]:
    """[[layer, head], ...] of the k heads with the largest induction score (a tie broken by
    the earlier layer, then head), in layer then head order: a set picked from the clean pass
    (tasks.<task>.ablation_sets.<name>: {induction_score_top: k})."""
    return largest_heads(scores, k, "induction_score_top")
