"""A tiny causal language model trained here, because no small pretrained one installs offline.

A randomly initialised Hugging Face model of the GPT-2 family (sequential blocks, learned
positions) or the Pythia family (GPT-NeoX: parallel attention and MLP, rotary on 25% of each
head, untied unembedding), trained on rows from `data.tokens.pack_rows` with AdamW, linear
warmup and cosine decay. The models are models.builders.build_model's. Checkpoints are `save_pretrained` folders that
`models.loading.load_local_checkpoint` loads. The tokenizer is `data.tokenizer`'s; the rule's
entry point (corpus -> rows -> model -> checkpoint) is `stages.data.train_model`.
"""

from __future__ import annotations

import json
import logging
import math
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from selfrepair.config.checkpoints import CHECKPOINT_DIR
from selfrepair.data.tokenizer import write_dir_atomically

__all__ = [
    "evaluate_loss",
    "frequent_ids",
    "repeat_rows",
    "save_checkpoint",
    "save_weights",
    "spread_rows",
    "train_causal_lm",
]

log = logging.getLogger(__name__)


def _lr_at(step: int, steps: int, lr: float, warmup: int, min_ratio: float = 0.1) -> float:
    if step < warmup:
        return lr * (step + 1) / warmup
    progress = (step - warmup) / max(1, steps - warmup)
    return lr * (min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress)))


def _row_loss(model, rows: torch.Tensor) -> torch.Tensor:
    """Mean next-token cross-entropy: positions 0..n-2 predict tokens 1..n-1."""
    logits = model(input_ids=rows[:, :-1]).logits
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), rows[:, 1:].reshape(-1))


@torch.no_grad()
def evaluate_loss(model, rows: np.ndarray, batch_size: int = 32) -> float:
    """Mean next-token loss (nats) over all predicted positions of rows."""
    was_training = model.training
    model.eval()
    total, count = 0.0, 0
    for start in range(0, len(rows), batch_size):
        chunk = torch.as_tensor(rows[start : start + batch_size], dtype=torch.long)
        n = chunk.shape[0] * (chunk.shape[1] - 1)
        total += float(_row_loss(model, chunk)) * n
        count += n
    model.train(was_training)
    return total / count


def repeat_rows(
    rows: np.ndarray,
    fraction: float,
    seed: int,
    vocabulary: np.ndarray,
    lengths: tuple[int, int] | None = None,
) -> np.ndarray:
    """rows with `fraction` of them (drawn with `seed`) made into induction rows: after BOS, a
    sequence of k distinct tokens drawn from `vocabulary`, repeated to the row's end, k drawn
    per row from `lengths` (default seq_len // 16 .. (seq_len - 1) // 2, at least 2). Only
    copying predicts a repeat, and with k varying only copying by content (the token after the
    previous occurrence: induction, Olsson et al. 2022), not by a fixed offset. Natural text of
    the demo's budget does not teach it (docs/demo.md, Induction).

    Args:
        rows: [rows, seq_len] token rows, BOS first.
        fraction: the share of rows replaced, in [0, 1].
        seed: draws the rows, their lengths and tokens.
        vocabulary: the ids drawn from (every ordinary token: tasks.induction.vocabulary_ids,
            or the most frequent: frequent_ids), at least as many as the longest sequence.
        lengths: (shortest, longest) sequence, both included, 2 <= shortest <= longest <=
            seq_len - 1.
    """
    out = rows.copy()
    rng = np.random.default_rng(seed)
    chosen = np.nonzero(rng.random(len(rows)) < fraction)[0]
    width = rows.shape[1] - 1
    if lengths is None:
        longest = max(2, width // 2)
        lengths = (min(longest, max(2, rows.shape[1] // 16)), longest)
    shortest, longest = lengths
    if not 2 <= shortest <= longest <= min(width, len(vocabulary)):
        raise ValueError(
            f"repeat lengths {shortest}..{longest} must lie in 2..{min(width, len(vocabulary))} "
            f"(the row's {width} tokens after BOS, the {len(vocabulary)} ids drawn from)"
        )
    drawn = rng.integers(shortest, longest + 1, len(chosen))
    for row, k in zip(chosen, drawn, strict=True):
        out[row, 1:] = np.resize(rng.choice(vocabulary, k, replace=False), width)
    return out


def frequent_ids(rows: np.ndarray, candidates: np.ndarray, n: int) -> np.ndarray:
    """The n ids of candidates that occur most often in rows, sorted by id (ties: the smaller
    id first). Induction rows drawn from them teach copying of tokens the model knows well."""
    candidates = np.asarray(candidates, dtype=np.int64)
    if not 1 <= n <= len(candidates):
        raise ValueError(f"n = {n} frequent ids must lie in [1, {len(candidates)}]")
    counts = np.bincount(rows.ravel(), minlength=int(candidates.max()) + 1)[candidates]
    order = np.lexsort((candidates, -counts))  # the last key sorts first: count, then id
    return np.sort(candidates[order[:n]])


def spread_rows(rows: np.ndarray, n: int) -> np.ndarray:
    """At most n rows, evenly spaced over all of rows (so every part of a split is seen)."""
    if len(rows) <= n:
        return rows
    return rows[np.linspace(0, len(rows) - 1, n).round().astype(np.int64)]


def _check_rows(
    train_rows: np.ndarray, heldout_rows: np.ndarray, steps: int, batch_size: int
) -> None:
    if len(train_rows) == 0 or len(heldout_rows) == 0:
        raise ValueError("train_rows and heldout_rows must not be empty")
    if steps < 1:
        raise ValueError(f"steps must be positive, got {steps}")
    if not 1 <= batch_size <= len(train_rows):
        raise ValueError(
            f"batch_size {batch_size} must lie in [1, {len(train_rows)}] (the train rows)"
        )


def _adamw(model, lr: float, weight_decay: float) -> torch.optim.AdamW:
    """AdamW with weight decay on matrices only (not on biases, norms' scales)."""
    decay = [p for p in model.parameters() if p.requires_grad and p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.requires_grad and p.dim() < 2]
    return torch.optim.AdamW(
        [
            {"params": decay, "weight_decay": weight_decay},
            {"params": no_decay, "weight_decay": 0.0},
        ],
        lr=lr,
        betas=(0.9, 0.95),
        eps=1e-8,
    )


def _batch_indices(order: np.random.Generator, n_rows: int, batch_size: int) -> Iterator:
    """Sorted row indices of each batch, walking through a permutation of the rows that is
    drawn anew (from `order`) whenever the rest of it cannot fill a batch. Endless."""
    perm = order.permutation(n_rows)
    cursor = 0
    while True:
        if cursor + batch_size > len(perm):
            perm = order.permutation(n_rows)
            cursor = 0
        index = perm[cursor : cursor + batch_size]
        cursor += batch_size
        yield np.sort(index)


def _run_steps(
    model,
    optimizer: torch.optim.Optimizer,
    train_rows: np.ndarray,
    batches: Iterator,
    *,
    steps: int,
    lr: float,
    warmup: int,
    grad_clip: float,
    progress: bool,
    keep: Callable[[int], None] | None = None,
) -> list[float]:
    """The optimisation loop; returns each step's training loss. keep(n) is called after the
    n-th step (and keep(0) before the first), so the caller can save intermediate weights."""
    from tqdm.auto import tqdm

    losses: list[float] = []
    bar = tqdm(
        range(steps),
        desc="training",
        disable=not progress,
        mininterval=5.0,
        file=sys.stderr,
        ascii=True,
    )
    if keep is not None:
        keep(0)
    for step in bar:
        batch = torch.as_tensor(train_rows[next(batches)], dtype=torch.long)
        for group in optimizer.param_groups:
            group["lr"] = _lr_at(step, steps, lr, warmup)
        loss = _row_loss(model, batch)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
        optimizer.step()
        losses.append(loss.item())
        if not math.isfinite(losses[-1]):
            raise FloatingPointError(f"training loss is {losses[-1]} at step {step}")
        bar.set_postfix(loss=f"{np.mean(losses[-50:]):.3f}", refresh=False)
        if keep is not None:
            keep(step + 1)
    bar.close()
    return losses


def _metrics(
    model,
    train_rows: np.ndarray,
    heldout_rows: np.ndarray,
    losses: list[float],
    heldout: float,
    initial_heldout: float,
    hyperparameters: dict,
) -> dict:
    """The training record (training.json): losses, sizes, hyper-parameters; no timings."""
    steps = len(losses)
    batch_size = hyperparameters["batch_size"]
    tokens_seen = steps * batch_size * (train_rows.shape[1] - 1)
    return {
        "train_loss": float(np.mean(losses[-50:])),
        "heldout_loss": heldout,
        "initial_heldout_loss": initial_heldout,
        "uniform_loss": math.log(model.config.vocab_size),
        "tokens_seen": int(tokens_seen),
        "steps": steps,
        "train_rows": len(train_rows),
        "heldout_rows": len(heldout_rows),
        "epochs": steps * batch_size / len(train_rows),
        "hyperparameters": {
            **hyperparameters,
            "schedule": "linear warmup, cosine decay to lr / 10",
            "optimizer": "AdamW(betas=(0.9, 0.95), eps=1e-8)",
            "seq_len": int(train_rows.shape[1]),
            "torch_threads": torch.get_num_threads(),
        },
    }


def _log_training(metrics: dict, seconds: float, cpu_seconds: float) -> None:
    # Timings go to the log (and the rule's benchmark file) only: the metrics are a result, the
    # same on every rerun.
    log.info(
        "trained %d steps in %.0f s (%.0f CPU s, %.0f tokens/s): train loss %.3f, held-out %.3f "
        "(initial %.3f, uniform %.3f)",
        metrics["steps"],
        seconds,
        cpu_seconds,
        metrics["tokens_seen"] / seconds,
        metrics["train_loss"],
        metrics["heldout_loss"],
        metrics["initial_heldout_loss"],
        metrics["uniform_loss"],
    )


def train_causal_lm(
    model,
    train_rows: np.ndarray,
    heldout_rows: np.ndarray,
    *,
    steps: int,
    batch_size: int,
    lr: float,
    seed: int,
    warmup: int | None = None,
    weight_decay: float = 0.1,
    grad_clip: float = 1.0,
    progress: bool = True,
    keep: Callable[[int], None] | None = None,
) -> dict:
    """Train on rows (from pack_rows) by next-token cross-entropy: AdamW (betas 0.9, 0.95,
    weight decay on matrices only), linear warmup (default min(100, steps // 10) steps) then
    cosine decay to lr / 10, gradient clipping. Batches walk through a seeded permutation of
    the rows, epoch after epoch. Deterministic for a seed on CPU. Returns metrics.

    Args:
        model: a Hugging Face causal LM (build_model's), trained in place.
        train_rows: [rows, seq_len] token ids to train on.
        heldout_rows: [rows, seq_len] token ids for the held-out loss before and after.
        steps: optimiser steps.
        batch_size: rows per step (and per evaluation batch).
        lr: peak learning rate.
        seed: seeds torch and the batch order.
        warmup: linear warmup steps (default min(100, steps // 10), at least 1).
        weight_decay: AdamW weight decay of matrices.
        grad_clip: gradient norm clip.
        progress: show a progress bar on stderr.
        keep: called with n after the n-th step (0: before the first) to save intermediate
            weights; it must not change the model (the final weights do not depend on it).
    """
    _check_rows(train_rows, heldout_rows, steps, batch_size)
    warmup = min(100, max(1, steps // 10)) if warmup is None else max(1, warmup)
    deterministic = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True)
    try:
        torch.manual_seed(seed)
        order = np.random.default_rng(seed)
        initial_heldout = evaluate_loss(model, heldout_rows, batch_size)
        optimizer = _adamw(model, lr, weight_decay)
        model.train()
        start_time, start_cpu = time.perf_counter(), time.process_time()
        losses = _run_steps(
            model,
            optimizer,
            train_rows,
            _batch_indices(order, len(train_rows), batch_size),
            steps=steps,
            lr=lr,
            warmup=warmup,
            grad_clip=grad_clip,
            progress=progress,
            keep=keep,
        )
        seconds = time.perf_counter() - start_time
        cpu_seconds = time.process_time() - start_cpu
        model.eval()
        heldout = evaluate_loss(model, heldout_rows, batch_size)
    finally:
        torch.use_deterministic_algorithms(deterministic)
    hyperparameters = {
        "batch_size": batch_size,
        "lr": lr,
        "seed": seed,
        "warmup": warmup,
        "weight_decay": weight_decay,
        "grad_clip": grad_clip,
    }
    metrics = _metrics(
        model, train_rows, heldout_rows, losses, heldout, initial_heldout, hyperparameters
    )
    _log_training(metrics, seconds, cpu_seconds)
    return metrics


def save_weights(model, tokenizer, out_dir) -> None:
    """save_pretrained of model (safetensors) and tokenizer into out_dir: a loadable
    checkpoint (intermediate checkpoints are just this). Reads the model, never changes it."""
    model.save_pretrained(str(out_dir), safe_serialization=True)
    tokenizer.save_pretrained(str(out_dir))


def save_checkpoint(
    model,
    tokenizer,
    metrics: dict,
    out_dir,
    kept: Path | None = None,
    as_text: Callable[[dict, Path], str] | None = None,
) -> None:
    """save_pretrained of model (safetensors) and tokenizer, plus training.json (metrics,
    hyper-parameters, versions), written into a temporary sibling and renamed into place.
    kept: a folder of intermediate checkpoints (step<N>/) moved in as <out_dir>/checkpoints.
    as_text: training.json's text from its content and final path (the workflow's adds its
    integrity record: stages.records.json_text); plain JSON by default."""
    import tokenizers
    import transformers

    def write(tmp) -> None:
        save_weights(model, tokenizer, tmp)
        if kept is not None:
            Path(kept).rename(tmp / CHECKPOINT_DIR)
        record = {
            **metrics,
            "model": {
                "architecture": model.config.architectures[0]
                if model.config.architectures
                else type(model).__name__,
                "n_parameters": sum(p.numel() for p in model.parameters()),
            },
            "versions": {
                "torch": torch.__version__,
                "transformers": transformers.__version__,
                "tokenizers": tokenizers.__version__,
                "python": sys.version.split()[0],
            },
        }
        final = Path(out_dir) / "training.json"
        text = as_text(record, final) if as_text else json.dumps(record, indent=2) + "\n"
        (tmp / "training.json").write_text(text)

    write_dir_atomically(out_dir, write)
