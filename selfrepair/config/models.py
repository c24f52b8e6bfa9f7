"""Model entries of the config: their names (TransformerLens aliases -> Hugging Face names), the
size the config can know without loading a model (model_dims), whether a local checkpoint is an
architecture TransformerLens converts, and device/dtype problems. No heavy imports: the Snakefile
is parsed by every job, and transformer_lens takes seconds to import."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from selfrepair import catalogue
from selfrepair.config.errors import ConfigError
from selfrepair.variables import head_label

# (layer, head) of an attention head.
Head = tuple[int, int]

__all__ = [
    "HEAD_KEYS",
    "Head",
    "LAYER_KEYS",
    "LOCAL_ARCHITECTURES",
    "NON_CAUSAL_TYPES",
    "PARALLEL_TYPES",
    "RMS_GATED_TYPES",
    "architecture_problem",
    "check_device_dtype",
    "check_hub_names",
    "check_model_entry",
    "device_problem",
    "missing_head",
    "model_dims",
    "model_entries",
    "official_model_name",
    "parallel_blocks",
    "pickled_weights_message",
    "pickled_weights_problem",
    "rms_gated_activation",
    "text_models",
]


def model_entries(config: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Models by name; a bare string entry is a TransformerLens name with no options.

    Args:
        config: the validated workflow config (its `models` and `tokenizers`).
    """
    entries: dict[str, dict[str, Any]] = {}
    for item in config["models"]:
        entry = {"name": item} if isinstance(item, str) else dict(item)
        if entry["name"] in entries:
            raise ConfigError(f"config key models: {entry['name']!r} is listed twice")
        entries[entry["name"]] = entry
    for name, entry in entries.items():
        tok = entry.get("train", {}).get("tokenizer")
        if tok is not None and tok not in config.get("tokenizers", {}):
            raise ConfigError(
                f"config key models[{name}].train.tokenizer: {tok!r} is not defined under "
                "tokenizers"
            )
    return entries


def text_models(entries: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """The models of the paper's text path (shards, figures, tables, explorer, training
    checkpoints): every model entry but the tasks_only ones, which run their tasks only."""
    return {name: entry for name, entry in entries.items() if not entry.get("tasks_only")}


def official_model_name(name: str) -> str:
    """The Hugging Face name of a TransformerLens model name or alias (e.g. pythia-160m ->
    EleutherAI/pythia-160m); ConfigError naming the fix when unknown (catalogue's, as a
    ConfigError)."""
    try:
        return catalogue.official_model_name(name)
    except catalogue.CatalogueError as err:
        raise ConfigError(str(err)) from None


def check_hub_names(entries: dict[str, dict[str, Any]]) -> None:
    """Hub models must be TransformerLens names; checked offline, before any work starts."""
    for name, entry in entries.items():
        if "path" not in entry and "train" not in entry:
            official_model_name(name)


# The spellings of layer and head counts in a Hugging Face config.json that TransformerLens reads
# (GPT-2/Bloom/GPT-J: n_layer, n_head; GPT-Neo: num_layers, num_heads; most others:
# num_hidden_layers, num_attention_heads).
LAYER_KEYS = ("num_hidden_layers", "n_layer", "num_layers", "n_layers")
HEAD_KEYS = ("num_attention_heads", "n_head", "num_heads", "n_heads")


def _first_int(hf: dict[str, Any], keys: tuple[str, ...]) -> int | None:
    for key in keys:
        if isinstance(hf.get(key), int) and not isinstance(hf.get(key), bool):
            return hf[key]
    return None


def _checkpoint_config(entry: dict[str, Any]) -> dict[str, Any] | None:
    """A `path` entry's config.json, or None while the checkpoint is not there (check_model_entry
    says why at config time; model_dims and parallel_blocks then know nothing)."""
    cfg_file = Path(entry["path"]) / "config.json"
    return json.loads(cfg_file.read_text()) if cfg_file.is_file() else None


def model_dims(entry: dict[str, Any]) -> tuple[int, int] | None:
    """(n_layers, n_heads) of a model entry when the config can know it without loading it:
    a trained model's `train`, a checkpoint's config.json, or a paper model's (the catalogue:
    hub models whose size the config cannot read, so that a configured head out of range fails
    before any job starts; other hub models are checked when their job loads them); None
    otherwise."""
    if "train" in entry:
        return entry["train"].get("n_layers", 4), entry["train"].get("n_heads", 4)
    if "path" in entry:
        hf = _checkpoint_config(entry)
        if hf is not None:
            layers = _first_int(hf, LAYER_KEYS)
            heads = _first_int(hf, HEAD_KEYS)
            if layers is not None and heads is not None:
                return layers, heads
        return None
    paper = catalogue.paper_model(entry["name"])
    return None if paper is None else (paper.shapes.n_layers, paper.shapes.n_heads)


def missing_head(model: str, layer: int, head: int, n_layers: int, n_heads: int) -> str | None:
    """Why head (layer, head) does not exist in a model of this size, or None when it does."""
    if 0 <= layer < n_layers and 0 <= head < n_heads:
        return None
    return f"{model} has no {head_label(layer, head)} ({n_layers} layers x {n_heads} heads)"


# Hugging Face model types whose blocks TransformerLens runs with parallel attention and MLP
# (parallel_attn_mlp) without a use_parallel_residual key in config.json.
PARALLEL_TYPES = frozenset({"gptj", "phi"})


def parallel_blocks(entry: dict[str, Any]) -> bool | None:
    """Whether attention and MLP of a block read the same residual (Pythia), when known."""
    if "train" in entry:
        return entry["train"]["arch"] == "pythia"
    if "path" in entry:
        hf = _checkpoint_config(entry)
        if hf is None:
            return None
        return bool(hf.get("use_parallel_residual", hf.get("model_type") in PARALLEL_TYPES))
    if entry["name"].lower().startswith("pythia"):
        return True
    paper = catalogue.paper_model(entry["name"])
    return None if paper is None else paper.shapes.parallel_attn_mlp


# config.json model types that TransformerLens 3.9 converts into RMSNorm blocks with a gated MLP
# (Llama, and the architectures built like it that tests/test_architectures.py loads by path).
RMS_GATED_TYPES = frozenset({"llama", "mistral", "qwen2"})


def rms_gated_activation(entry: dict[str, Any]) -> str | None:
    """The gated MLP's activation (config.json `hidden_act`, e.g. silu) of a model that
    normalises with RMSNorm and has a gated MLP (a `path` entry of a type in RMS_GATED_TYPES,
    such as Llama); None for every other entry (GPT-2, Pythia, the demo's models: LayerNorm).
    Captions say what the paper's LayerNorm terms and neurons are for such a model.

    Args:
        entry: a model entry (model_entries' dict form).
    """
    hf = _checkpoint_config(entry) if "path" in entry else None
    if hf is None or hf.get("model_type") not in RMS_GATED_TYPES:
        return None
    return str(hf.get("hidden_act", "silu"))


# Architectures (config.json `architectures`) that TransformerLens 3.9 converts from a local
# checkpoint's config.json into a causal (decoder-only) HookedTransformer.
# docs/models-by-path.md lists those tested (tests/test_architectures.py).
LOCAL_ARCHITECTURES = frozenset(
    {
        "GPT2LMHeadModel",
        "GPTNeoForCausalLM",
        "GPTJForCausalLM",
        "GPTNeoXForCausalLM",
        "OPTForCausalLM",
        "BloomForCausalLM",
        "LlamaForCausalLM",
        "MistralForCausalLM",
        "MixtralForCausalLM",
        "Qwen2ForCausalLM",
        "Qwen3ForCausalLM",
        "PhiForCausalLM",
        "Phi3ForCausalLM",
        "OlmoeForCausalLM",
        "Olmo3ForCausalLM",
        "GptOssForCausalLM",
        "ApertusForCausalLM",
    }
)
# Encoders and encoder-decoders (BERT, T5, ...): no causal next-token logits to repair.
NON_CAUSAL_TYPES = frozenset(
    {"bert", "roberta", "distilbert", "albert", "electra", "deberta", "deberta-v2", "t5", "mt5",
     "bart", "mbart", "pegasus", "hubert", "wav2vec2", "whisper", "vit", "clip"}
)  # fmt: skip


def architecture_problem(hf: dict[str, Any]) -> str | None:
    """Why a checkpoint with this config.json cannot be loaded by path, or None.

    Args:
        hf: the checkpoint's config.json as a dict.
    """
    archs = hf.get("architectures") or []
    arch = archs[0] if archs else None
    model_type = hf.get("model_type", "?")
    label = f"{arch} ({model_type})" if arch else f"model_type {model_type!r}"
    if model_type in NON_CAUSAL_TYPES or (
        arch and not arch.endswith(("ForCausalLM", "LMHeadModel"))
    ):
        return (
            f"is a {label} checkpoint, not a causal language model; self-repair is measured on "
            "decoder-only LMs (GPT-2, Pythia, Llama, ...)"
        )
    if arch is None:
        return (
            "has a config.json without `architectures`; save the checkpoint with "
            "save_pretrained of a *ForCausalLM model"
        )
    if arch.startswith("Gemma"):
        return (
            f"is a {label} checkpoint: TransformerLens 3.9 builds Gemma models only from its own "
            "hub names (e.g. google/gemma-2b), never from a local config.json; use that name "
            "without `path`"
        )
    if arch not in LOCAL_ARCHITECTURES:
        return (
            f"is a {label} checkpoint, which TransformerLens 3.9 cannot convert from a local "
            "config.json; see docs/models-by-path.md"
        )
    return None


def check_model_entry(name: str, entry: dict[str, Any]) -> None:
    """A model entry's own consistency: a trained model's head count divides its width; a
    `path` is a Hugging Face checkpoint of a causal architecture TransformerLens converts.

    Args:
        name: the entry's name.
        entry: the entry (model_entries' dict form).
    """
    key = f"config key models[{name}]"
    train = entry.get("train")
    if train is not None:
        d_model, n_heads = train.get("d_model", 128), train.get("n_heads", 4)
        if d_model % n_heads:
            raise ConfigError(
                f"{key}.train.n_heads: {n_heads} heads do not divide train.d_model {d_model}; "
                "choose n_heads that divides d_model (e.g. 4 for 128)"
            )
    path = entry.get("path")
    if path is None:
        return
    root = Path(path)
    fix = "point it at a Hugging Face checkpoint directory (save_pretrained output)"
    if not root.exists():
        raise ConfigError(f"{key}.path: {path!r} does not exist; {fix}")
    if not (root / "config.json").is_file():
        raise ConfigError(f"{key}.path: {path!r} has no config.json; {fix}")
    try:
        hf = json.loads((root / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise ConfigError(f"{key}.path: {path}/config.json cannot be read ({err}); {fix}") from None
    if not isinstance(hf, dict):
        raise ConfigError(f"{key}.path: {path}/config.json is not a JSON object; {fix}")
    if problem := architecture_problem(hf):
        raise ConfigError(f"{key}.path: {path!r} {problem}")


def check_device_dtype(device: str, dtype: str) -> None:
    """Half precision on an explicit CPU device fails everywhere, so it fails at once.

    Args:
        device: config `device` (auto, cpu, cuda, cuda:N).
        dtype: config `dtype` (float32, bfloat16, float16).
    """
    if dtype != "float32" and device == "cpu":
        raise ConfigError(
            f"config key dtype: {dtype} runs only on CUDA and device is cpu; set dtype: float32 "
            "(or device: cuda on a machine with a GPU)"
        )


def device_problem(device: str, dtype: str, n_cuda: int) -> str | None:
    """Why this machine cannot run `device` and `dtype`, in one line naming the key and the fix,
    or None. The same line comes from the workflow's start (a local run) and from a job's model
    load (selfrepair.models.loading: a cluster node).

    Args:
        device: config `device` (auto, cpu, cuda, cuda:N).
        dtype: config `dtype`.
        n_cuda: CUDA devices this machine has (torch.cuda.device_count(); 0 without CUDA).
    """
    if device.startswith("cuda"):
        if n_cuda == 0:
            return (
                f"config key device: {device} was asked for but this machine has no CUDA device; "
                "set device: auto (or cpu)"
            )
        index = int(device.split(":")[1]) if ":" in device else 0
        if index >= n_cuda:
            return (
                f"config key device: {device} was asked for but this machine has {n_cuda} CUDA "
                f"device(s); set device: cuda:0 .. cuda:{n_cuda - 1} or auto"
            )
    if dtype != "float32" and (device == "cpu" or (device == "auto" and n_cuda == 0)):
        where = "this machine has no CUDA device" if device == "auto" else "device is cpu"
        return f"config key dtype: {dtype} runs only on CUDA and {where}; set dtype: float32"
    return None


def pickled_weights_problem(folder: str | Path) -> str | None:
    """Why the pickled weights of a checkpoint folder will not load (None when they will, or
    when it has safetensors, which transformers reads instead): transformers loads
    pytorch_model*.bin with torch's weights-only unpickler, which refuses any pickled object
    beyond tensors. Reads only the pickles, not the tensors (imports torch: call it at the
    workflow's start, not at parse time).

    Args:
        folder: a Hugging Face checkpoint folder.
    """
    import torch

    root = Path(folder)
    if any(root.glob("*.safetensors")):
        return None
    for file in sorted(root.glob("pytorch_model*.bin")):
        try:
            unsafe = torch.serialization.get_unsafe_globals_in_checkpoint(str(file))
        except Exception as err:  # noqa: BLE001 -- any unreadable file says the same
            return f"{file.name} cannot be read as a torch checkpoint ({type(err).__name__})"
        if unsafe:
            return f"{file.name} holds pickled objects beyond weights ({', '.join(unsafe[:3])})"
    return None


def pickled_weights_message(folder: str | Path, problem: str, key: str = "") -> str:
    """The one line for a pickled_weights_problem: the folder, the problem, the fix."""
    where = f"config key {key}: " if key else ""
    return (
        f"{where}model folder {folder}: {problem}; only safetensors or weights-only checkpoints "
        "load (load it once where you trust it and save_pretrained it: that writes "
        "model.safetensors)"
    )
