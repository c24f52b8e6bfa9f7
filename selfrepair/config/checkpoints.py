"""Training checkpoints of a model (issue 15): each intermediate checkpoint is a model key of its
own, `<model>@step<N>` (e.g. tiny-gpt2@step100), so the clean and ablation rules run on it
unchanged; the model's own key is its final checkpoint (same paths, same numbers as without
checkpoints). Three sources:

- hub revisions of a Pythia model: `revisions: [step1000, ...]` (TransformerLens' own
  checkpoint support, `from_pretrained(name, checkpoint_value=1000)`);
- local checkpoint folders: `checkpoints: [{step: 100, path: dir}, ...]`;
- a model trained by the workflow: `train.keep_steps: [0, 50, ...]` (train_model saves them in
  `resources/models/<model>/checkpoints/step<N>`).

Checked at parse time (bad names, steps or paths fail naming the key); no heavy imports.
"""

from __future__ import annotations

import re
from typing import Any

from selfrepair.config.errors import ConfigError
from selfrepair.config.layout import n_shards
from selfrepair.config.models import check_model_entry, official_model_name

__all__ = [
    "CHECKPOINT_DIR",
    "PYTHIA_FINAL_STEP",
    "PYTHIA_STEPS",
    "check_checkpoints",
    "checkpoint_key",
    "checkpoint_models",
    "keeps_every_token",
    "checkpoint_steps",
    "final_step",
    "model_checkpoints",
]

# The revisions every Pythia model is published at (as TransformerLens 3.9's
# loading_from_pretrained.PYTHIA_CHECKPOINTS; a test keeps them equal): step0, log-spaced steps
# up to 512, then every 1000 steps to the final 143000, which is also `main`.
PYTHIA_FINAL_STEP = 143000
PYTHIA_STEPS = (0, 1, 2, 4, 8, 16, 32, 64, 128, 256, 512) + tuple(
    range(1000, PYTHIA_FINAL_STEP + 1, 1000)
)
# Where train_model keeps a trained model's intermediate checkpoints, inside its own folder
# (the model's own files, and so its weights' hash, stay as they are).
CHECKPOINT_DIR = "checkpoints"
_REVISION = re.compile(r"^step(0|[1-9][0-9]*)$")


def checkpoint_key(model: str, step: int) -> str:
    """The model key of a checkpoint: `<model>@step<N>` ('@' is in no configured name)."""
    return f"{model}@step{step}"


def _is_pythia(name: str) -> bool:
    return official_model_name(name).startswith("EleutherAI/pythia")


def final_step(name: str, entry: dict[str, Any]) -> int | None:
    """The training step of a model's own weights: `step` if given, else a trained model's
    train.steps, a Pythia hub model's 143000 (its `main`), or None (unknown)."""
    if "step" in entry:
        return int(entry["step"])
    if "train" in entry:
        return int(entry["train"].get("steps", 1500))
    if "path" not in entry and _is_pythia(name):  # a hub model (train: above)
        return PYTHIA_FINAL_STEP
    return None


def model_checkpoints(name: str, entry: dict[str, Any]) -> list[dict[str, Any]]:
    """A model entry's intermediate checkpoints, by step: {step, and one of revision (hub),
    path (local folder), subdir (of the trained model's folder)}; [] when it lists none.

    Args:
        name: the model's name.
        entry: its config entry (model_entries' dict form).
    """
    found = [{"step": int(rev[4:]), "revision": rev} for rev in entry.get("revisions") or []]
    found += [{"step": int(c["step"]), "path": c["path"]} for c in entry.get("checkpoints") or []]
    keep = (entry.get("train") or {}).get("keep_steps") or []
    final = final_step(name, entry)
    found += [{"step": int(s), "subdir": f"{CHECKPOINT_DIR}/step{s}"} for s in keep if s != final]
    return sorted(found, key=lambda c: c["step"])


def check_checkpoints(entries: dict[str, dict[str, Any]]) -> None:
    """Every model's checkpoints, before any job: revisions only of Pythia hub models and only
    published ones (`step<N>`), checkpoint folders that are Hugging Face checkpoints, distinct
    steps below the final one (which must be known), keep_steps within train.steps.

    Args:
        entries: the model entries by name (model_entries).
    """
    for name, entry in entries.items():
        key = f"config key models[{name}]"
        revisions = entry.get("revisions") or []
        if revisions and ("path" in entry or "train" in entry or not _is_pythia(name)):
            raise ConfigError(
                f"{key}.revisions: only Pythia hub models (e.g. pythia-160m) are published at "
                "training revisions; list local checkpoint folders under `checkpoints` instead"
            )
        for rev in revisions:
            if not _REVISION.match(str(rev)) or int(str(rev)[4:]) not in PYTHIA_STEPS:
                raise ConfigError(
                    f"{key}.revisions: {rev!r} is not a Pythia revision; use step<N> with N in "
                    "0, 1, 2, 4, ..., 512, then multiples of 1000 up to 143000 (e.g. step1000)"
                )
        for i, ckpt in enumerate(entry.get("checkpoints") or []):
            check_model_entry(f"{name}].checkpoints[{i}", {"path": ckpt["path"]})
        steps = [c["step"] for c in model_checkpoints(name, entry)]
        if not steps:
            continue
        final = final_step(name, entry)
        if final is None:
            raise ConfigError(
                f"{key}.step: the training step of {name}'s own weights is needed to place its "
                "checkpoints on the step axis; add `step: <N>` to the entry"
            )
        if len(set(steps)) != len(steps):
            raise ConfigError(f"{key}: two checkpoints share a step ({sorted(steps)})")
        if max(steps) > final:
            raise ConfigError(
                f"{key}: checkpoint step {max(steps)} is after the final step {final}; list "
                f"steps below {final} (the model's own weights are step {final})"
            )


def checkpoint_models(
    entries: dict[str, dict[str, Any]],
) -> dict[str, dict[str, Any]]:
    """The model keys of every intermediate checkpoint (`<model>@step<N>`), with the entry its
    rules read: the model's heads, batch size and resources, and `checkpoint` ({model, step, and
    revision, path or subdir}).

    Args:
        entries: the model entries by name (checked by check_checkpoints).
    """
    out: dict[str, dict[str, Any]] = {}
    for name, entry in entries.items():
        for ckpt in model_checkpoints(name, entry):
            keep = {k: entry[k] for k in ("heads", "batch_size", "resources") if k in entry}
            key = checkpoint_key(name, ckpt["step"])
            out[key] = {"name": key, **keep, "checkpoint": {"model": name, **ckpt}}
    return out


def keeps_every_token(
    config: dict[str, Any], checkpoints: dict[str, dict[str, Any]], key: str, shard: int
) -> bool:
    """Whether the ablate job of model key `key` and `shard` keeps every token: under
    engine.store_tokens: all, for a training checkpoint, and on the shards the training figure
    reads (checkpoint_shards) of a model with checkpoints.

    Args:
        config: the validated workflow config.
        checkpoints: checkpoint_models' entries by key.
        key: the model key (a model, or <model>@step<N>).
        shard: the shard number.
    """
    if config["engine"]["store_tokens"] == "all" or key in checkpoints:
        return True
    owners = {entry["checkpoint"]["model"] for entry in checkpoints.values()}
    return key in owners and shard < (config.get("checkpoint_shards") or n_shards(config["data"]))


def checkpoint_steps(name: str, entry: dict[str, Any]) -> list[tuple[str, int]]:
    """(model key, step) of every checkpoint of a model, the model itself (final) last; [] for
    a model without checkpoints.

    Args:
        name: the model's name.
        entry: its config entry.
    """
    ckpts = model_checkpoints(name, entry)
    if not ckpts:
        return []
    final = final_step(name, entry)
    return [(checkpoint_key(name, c["step"]), c["step"]) for c in ckpts] + [(name, final)]
