"""The memory a model's job needs at least, from the config alone, checked against its
resources.mem_mb before any job: a checkpoint whose config.json asks for an absurd width fails in
one line naming the model, not in a job after tokenizing, under a transformers warning.

The estimate is a lower bound: the float32 weights twice (loading holds the Hugging Face model
and the HookedTransformer at once; a tied unembedding once in the first) and one batch's logits over the vocabulary with their
log-softmax (clean_cache's loss). It is computed with Python integers, never by allocating.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from selfrepair.catalogue import Shapes
from selfrepair.config.cluster import model_resources
from selfrepair.config.errors import ConfigError
from selfrepair.config.models import HEAD_KEYS, LAYER_KEYS

__all__ = ["cached_hub_entry", "check_model_memory", "job_bytes", "model_size"]

FLOAT32 = 4
WIDTH_KEYS = ("hidden_size", "n_embd", "d_model", "dim")
MLP_KEYS = ("intermediate_size", "n_inner", "ffn_dim", "d_mlp")
CONTEXT_KEYS = ("max_position_embeddings", "n_positions", "n_ctx", "seq_length")
GATED_TYPES = frozenset({"llama", "mistral", "mixtral", "qwen2", "qwen3", "olmoe", "olmo3"})
LEARNED_POSITION_TYPES = frozenset({"gpt2", "gpt_neo", "opt"})


def _int(hf: dict[str, Any], keys: tuple[str, ...]) -> int | None:
    for key in keys:
        value = hf.get(key)
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    return None


def cached_hub_entry(entry: dict[str, Any]) -> dict[str, Any]:
    """A hub model's entry as a `path` entry of its snapshot in the local Hugging Face cache
    when its config.json is there (what the config can know of it before any job); any other
    entry, or a hub model not cached, unchanged."""
    if "path" in entry or "train" in entry or "checkpoint" in entry:
        return entry
    try:
        from huggingface_hub import try_to_load_from_cache

        from selfrepair.config.models import official_model_name

        found = try_to_load_from_cache(official_model_name(entry["name"]), "config.json")
    except (ImportError, ConfigError):
        found = None
    if isinstance(found, str):  # not None, nor the cache's "known to be missing"
        return {"name": entry["name"], "path": str(Path(found).parent)}
    return entry


def model_size(entry: dict[str, Any], config: dict[str, Any]) -> Shapes | None:
    """The size of a trained model (its `train`) or a checkpoint by path (its config.json);
    None for hub models and for a config.json that lacks a count."""
    if "train" in entry:
        train = entry["train"]
        d = train.get("d_model", 128)
        vocab = config["tokenizers"][train["tokenizer"]].get("vocab_size", 4096)
        seq = config["data"].get("seq_len", 128)
        n_positions = seq if train["arch"] == "gpt2" else 0
        n_layers, n_heads = train.get("n_layers", 4), train.get("n_heads", 4)
        return Shapes(n_layers=n_layers, n_heads=n_heads, d_model=d, d_mlp=4 * d, d_vocab=vocab,
                      n_positions=n_positions)  # fmt: skip
    cfg_file = Path(entry["path"]) / "config.json" if "path" in entry else None
    if cfg_file is None or not cfg_file.is_file():
        return None
    hf = json.loads(cfg_file.read_text(encoding="utf-8"))
    n_layers, d_model = _int(hf, LAYER_KEYS), _int(hf, WIDTH_KEYS)
    d_vocab = _int(hf, ("vocab_size",))
    if None in (n_layers, d_model, d_vocab):
        return None
    d_mlp = _int(hf, MLP_KEYS) or 4 * d_model
    learned = hf.get("model_type") in LEARNED_POSITION_TYPES
    n_positions = (_int(hf, CONTEXT_KEYS) or 0) if learned else 0
    gated = hf.get("model_type") in GATED_TYPES
    tied = bool(hf.get("tie_word_embeddings", True))
    n_heads = _int(hf, HEAD_KEYS) or 0
    return Shapes(n_layers=n_layers, n_heads=n_heads, d_model=d_model, d_mlp=d_mlp,
                  d_vocab=d_vocab, n_positions=n_positions, gated_mlp=gated, tied=tied)  # fmt: skip


def job_bytes(size: Shapes, batch_size: int, seq_len: int) -> int:
    """At least what one job of the model holds: the float32 weights of both models while
    loading, and a batch's logits and their log-softmax."""
    return FLOAT32 * size.loading_parameters() + 2 * FLOAT32 * batch_size * seq_len * size.d_vocab


def check_model_memory(config: dict[str, Any], entries: dict[str, dict[str, Any]]) -> None:
    """Every model whose size the config knows fits its jobs' resources.mem_mb.

    Args:
        config: the validated workflow config.
        entries: the model entries by name (model_entries).
    """
    seq_len = config["data"].get("seq_len", 128)
    for name, entry in entries.items():
        size = model_size(entry, config)
        if size is None:
            continue
        batch = entry.get("batch_size", config["engine"].get("batch_size", 30))
        need = job_bytes(size, batch, seq_len)
        mem_mb = model_resources(config, entry)["mem_mb"]
        if need > mem_mb * 2**20:
            raise ConfigError(
                f"config key models[{name}]: a job of {name} needs at least {_gb(need)} "
                f"({size.parameters():,} float32 parameters, held twice while loading, and a "
                f"batch's logits) but resources.mem_mb is {mem_mb:,} MB; raise "
                f"models[{name}].resources.mem_mb, or check the checkpoint's config.json"
            )


def _gb(n: int) -> str:
    for unit, factor in (("PB", 2**50), ("TB", 2**40), ("GB", 2**30)):
        if n >= factor:
            return f"{n / factor:,.1f} {unit}"
    return f"{n / 2**20:,.0f} MB"
