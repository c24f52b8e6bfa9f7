"""Tasks: the distributions researchers study self-repair on (IOI, induction, a user's prompts),
as padded token rows with their scored answer positions, counterfactuals and corrupted partners
(prompts.TaskPrompts), generated with the run's seed from the model's own tokenizer. Pure: no
store I/O (stages.tasks), no torch."""

from __future__ import annotations

from typing import Any

from selfrepair.tasks.induction import induction_prompts
from selfrepair.tasks.ioi import ioi_prompts
from selfrepair.tasks.jsonl import file_prompts, read_prompt_lines
from selfrepair.tasks.prompts import Prompt, TaskError, TaskPrompts, pad_prompts

__all__ = [
    "METRICS",
    "TASK_TYPES",
    "Prompt",
    "TaskError",
    "TaskPrompts",
    "build_task",
    "has_counterfactuals",
    "has_corrupted",
    "pad_prompts",
]

TASK_TYPES = ("ioi", "induction", "prompts")
# correct_logit: the answer's centred logit (the paper's); logit_diff: answer - counterfactual.
METRICS = ("correct_logit", "logit_diff")


def has_counterfactuals(spec: dict[str, Any]) -> bool:
    """Whether every prompt of the task has a counterfactual answer (metric logit_diff)."""
    if spec["type"] == "prompts":
        return all(line.counterfactual for line in read_prompt_lines(spec["file"]))
    return spec["type"] == "ioi"


def has_corrupted(spec: dict[str, Any]) -> bool:
    """Whether every prompt of the task has a corrupted partner (ablation corrupted)."""
    if spec["type"] == "prompts":
        return all(line.corrupted for line in read_prompt_lines(spec["file"]))
    return True


def build_task(
    spec: dict[str, Any], tokenizer: Any, seed: int, bos_id: int, n_ctx: int | None = None
) -> TaskPrompts:
    """The task's prompts for one model's tokenizer.

    Args:
        spec: the task's config entry (tasks.<name>: type, n_prompts, length, file, ...; an
            entry of prompt_seeds has its prompt_seed, config.tasks.expand_prompt_seeds).
        tokenizer: the model's tokenizer (Hugging Face).
        seed: the run's seed (the prompts', unless the entry has a prompt_seed).
        bos_id: the id every row starts with (and padding takes).
        n_ctx: the model's context in positions, when known: rows longer are refused (a
            prompts file's each with its file:line).
    """
    kind = spec["type"]
    seed = spec.get("prompt_seed", seed)
    if kind == "ioi":
        options = {k: spec[k] for k in ("templates", "names", "prepend_bos") if k in spec}
        prompts = ioi_prompts(tokenizer, spec["n_prompts"], seed, bos_id, **options)
    elif kind == "induction":
        prompts = induction_prompts(tokenizer, spec["n_prompts"], spec["length"], seed, bos_id)
    elif kind == "prompts":
        prompts = file_prompts(tokenizer, read_prompt_lines(spec["file"]), bos_id, n_ctx)
    else:
        raise TaskError(f"unknown task type {kind!r}: choose one of {', '.join(TASK_TYPES)}")
    if n_ctx is not None and prompts.tokens.shape[1] - 1 > n_ctx:
        fix = "lower length" if kind == "induction" else "use a model with a longer context"
        raise TaskError(
            f"its rows of {prompts.tokens.shape[1]} tokens exceed the model's context of "
            f"{n_ctx} positions; {fix}"
        )
    prompts.attrs.update(task_type=kind, seed=seed, bos_id=bos_id, pad_id=bos_id)
    return prompts
