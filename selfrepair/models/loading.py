"""Loading models into HookedTransformer: hub names and local Hugging Face checkpoints (random ones
are built in models.builders).

Every model is processed as the paper does: fold_ln, center_writing_weights, center_unembed (and
TransformerLens' fold_value_biases, whose folded b_V each model keeps: models.value_bias).
"""

from __future__ import annotations

import contextlib
import json
import logging
import pickle
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from selfrepair.config import (
    ConfigError,
    device_problem,
    official_model_name,
    pickled_weights_message,
    pickled_weights_problem,
)
from selfrepair.models import value_bias

__all__ = [
    "DTYPES",
    "PROCESSING",
    "load_local_checkpoint",
    "load_model",
    "local_checkpoint_config",
    "resolve_device",
    "resolve_dtype",
]

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
PROCESSING = dict(fold_ln=True, center_writing_weights=True, center_unembed=True)

log = logging.getLogger(__name__)

if TYPE_CHECKING:  # imported where a model is loaded: resolve_device and resolve_dtype need none
    from transformer_lens import HookedTransformer, HookedTransformerConfig


def resolve_device(spec: str = "auto") -> str:
    """'auto' picks CUDA when present; a CUDA device this machine lacks fails in the line a local
    run's start gives (selfrepair.config.device_problem)."""
    if spec == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if spec.startswith("cuda"):
        n_cuda = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if problem := device_problem(spec, "float32", n_cuda):
            raise ConfigError(problem)
    return spec


def resolve_dtype(name: str, device: str) -> torch.dtype:
    """The torch dtype of a config dtype name; other than float32 only on CUDA."""
    if name not in DTYPES:
        raise ValueError(f"unknown dtype {name!r}: choose one of {', '.join(DTYPES)}")
    if name != "float32" and not device.startswith("cuda"):
        raise ConfigError(device_problem("cpu", name, 0))
    return DTYPES[name]


def load_model(
    name: str,
    path: str | None = None,
    device: str = "cpu",
    dtype=torch.float32,
    revision: str | None = None,
) -> HookedTransformer:
    """A model by TransformerLens name (from the hub) or from a local Hugging Face checkpoint,
    processed as the paper loads models, in eval mode.

    Args:
        name: the TransformerLens model name (unknown names fail naming the fix).
        path: a local Hugging Face checkpoint directory to load instead of the hub's.
        device: torch device ("cpu", "cuda", "cuda:1").
        dtype: torch dtype of the weights.
        revision: a hub training revision (`step<N>`, Pythia models), loaded through
            TransformerLens' own checkpoint support (`checkpoint_value=N`: the config from
            the model's main revision, the weights from revision step<N>).
    """
    from transformer_lens import HookedTransformer

    if revision is not None:
        if path is not None or not revision.startswith("step"):
            raise ValueError(f"a hub revision is step<N> of a hub model, not {revision!r}")
        official_model_name(name)
        with value_bias.recording() as kept:
            model = HookedTransformer.from_pretrained(
                name, checkpoint_value=int(revision[4:]), device=device, dtype=dtype, **PROCESSING
            )
        value_bias.attach(model, kept)
    elif path is None:
        official = official_model_name(name)  # unknown names fail here, naming the fix
        snapshot = _gpt2_snapshot_without_n_ctx(official)
        if snapshot is None:
            with value_bias.recording() as kept:
                model = HookedTransformer.from_pretrained(
                    name, device=device, dtype=dtype, **PROCESSING
                )
            value_bias.attach(model, kept)
        else:
            model = load_local_checkpoint(snapshot, device=device, dtype=dtype)
            model.cfg.model_name = official.split("/")[-1]  # as from_pretrained names it
    else:
        model = load_local_checkpoint(path, device=device, dtype=dtype)
    model.eval()
    return model


def _gpt2_snapshot_without_n_ctx(repo_id: str) -> str | None:
    """The local snapshot of a hub GPT-2 checkpoint whose config.json lacks n_ctx (transformers 5
    writes none; TransformerLens 3.9's from_pretrained reads it), fetched if needed, so that it
    is loaded through load_local_checkpoint's config view; None for every other checkpoint."""
    from huggingface_hub import hf_hub_download, snapshot_download

    config = json.loads(Path(hf_hub_download(repo_id, "config.json")).read_text())
    if config.get("model_type") != "gpt2" or "n_ctx" in config:
        return None
    patterns = ["*.json", "*.txt", "*.safetensors"]
    return snapshot_download(repo_id, allow_patterns=patterns)


def load_local_checkpoint(path: str, device: str = "cpu", dtype=torch.float32) -> HookedTransformer:
    """A local Hugging Face checkpoint (config.json + weights [+ tokenizer]) as a processed
    HookedTransformer, through TransformerLens' own weight conversion, with no hub access.

    Args:
        path: the checkpoint directory (save_pretrained output).
        device: torch device.
        dtype: torch dtype of the weights.
    """
    from transformer_lens import HookedTransformer
    from transformer_lens import loading_from_pretrained as loading
    from transformers import AutoModelForCausalLM, AutoTokenizer

    root = _checkpoint_root(path)
    try:
        hf_model = AutoModelForCausalLM.from_pretrained(root, dtype=torch.float32)
    except pickle.UnpicklingError:
        problem = pickled_weights_problem(root) or "its pickled weights are refused by torch"
        raise ConfigError(pickled_weights_message(path, problem)) from None
    with _checkpoint_view(root) as view:
        cfg = local_checkpoint_config(root, device=device, dtype=dtype, view=view)
        tokenizer = None
        if (Path(root) / "tokenizer.json").is_file() or (
            Path(root) / "tokenizer_config.json"
        ).is_file():
            tokenizer = AutoTokenizer.from_pretrained(root)
            cfg.tokenizer_name = root
        model = HookedTransformer(cfg, tokenizer=tokenizer, move_to_device=False)
        state_dict = loading.get_pretrained_state_dict(
            str(view), cfg, hf_model=hf_model, dtype=torch.float32
        )
    with value_bias.recording() as kept:
        model.load_and_process_state_dict(state_dict, **PROCESSING)
    value_bias.attach(model, kept)  # before the move: the buffer moves (and casts) with it
    return model.to(device=device, dtype=dtype) if dtype != torch.float32 else model.to(device)


def _checkpoint_root(path: str) -> str:
    """The absolute checkpoint directory; FileNotFoundError naming the fix without config.json."""
    root = Path(path)
    if not (root / "config.json").is_file():
        raise FileNotFoundError(
            f"model path {path!r} has no config.json: point `path` at a Hugging Face checkpoint "
            "directory (save_pretrained output)"
        )
    return str(root.resolve())


@contextlib.contextmanager
def _checkpoint_view(root: str) -> Iterator[Path]:
    """What TransformerLens is shown of a local checkpoint: it picks some architectures by
    substrings of the path ("llama", "gemma") before it reads config.json, and reads
    GPT2Config.n_ctx, which transformers 5 dropped. So it gets a neutrally named directory of
    links to the checkpoint's files, with a config.json that has n_ctx (= n_positions) where
    that is missing.

    Args:
        root: the checkpoint directory (absolute).
    """
    with tempfile.TemporaryDirectory(prefix="selfrepair-ckpt-") as tmp:
        view = Path(tmp) / "checkpoint"
        view.mkdir()
        for item in Path(root).iterdir():
            if item.name != "config.json":
                (view / item.name).symlink_to(item)
        hf_config = json.loads((Path(root) / "config.json").read_text())
        if "n_positions" in hf_config and "n_ctx" not in hf_config:
            hf_config["n_ctx"] = hf_config["n_positions"]
        (view / "config.json").write_text(json.dumps(hf_config))
        yield view


def local_checkpoint_config(
    path: str, device: str = "cpu", dtype=torch.float32, view: Path | None = None
) -> HookedTransformerConfig:
    """The HookedTransformerConfig that load_local_checkpoint builds from a checkpoint's
    config.json, without reading its weights (so also for a checkpoint too large to load here).

    Args:
        path: the checkpoint directory.
        device: torch device.
        dtype: torch dtype of the weights.
        view: its _checkpoint_view when the caller holds one.
    """
    from transformer_lens import loading_from_pretrained as loading

    root = _checkpoint_root(path)
    with contextlib.ExitStack() as stack:
        view = view or stack.enter_context(_checkpoint_view(root))
        with _rope_attributes_restored(loading):
            cfg = loading.get_pretrained_model_config(
                str(view), fold_ln=True, device=device, dtype=dtype
            )
    cfg.model_name = Path(root).name
    cfg.tokenizer_name = None  # never the temporary view: load_local_checkpoint sets it
    return cfg


@contextlib.contextmanager
def _rope_attributes_restored(loading):
    """While TransformerLens builds its config: transformers 5 keeps Phi's partial_rotary_factor
    only under rope_parameters (a config.json key at the top level is moved there when read),
    while TransformerLens 3.9 reads the attribute. So its AutoConfig is shown configs that have
    the attribute back, read from rope_parameters; nothing else changes.

    Args:
        loading: the transformer_lens.loading_from_pretrained module.
    """
    auto = loading.AutoConfig

    class ConfigView:
        @staticmethod
        def from_pretrained(*args, **kwargs):
            hf_config = auto.from_pretrained(*args, **kwargs)
            rope = getattr(hf_config, "rope_parameters", None) or {}
            if "partial_rotary_factor" in rope and not hasattr(hf_config, "partial_rotary_factor"):
                hf_config.partial_rotary_factor = rope["partial_rotary_factor"]
            return hf_config

    loading.AutoConfig = ConfigView
    try:
        yield
    finally:
        loading.AutoConfig = auto
