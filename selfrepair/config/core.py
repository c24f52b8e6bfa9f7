"""Configuration helpers shared by the Snakefile and the scripts: validation messages that name
the key, model entries, and the row/shard layout that every stage agrees on."""

from __future__ import annotations

import functools
import importlib.util
import json
import math
import os
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # figure scripts import this module in the analysis env, without jsonschema
    import jsonschema


class ConfigError(ValueError):
    """A configuration problem, stated in one line that names the key and the fix."""


def key_path(error: jsonschema.ValidationError) -> str:
    parts = [str(p) if not isinstance(p, int) else f"[{p}]" for p in error.absolute_path]
    return ".".join(parts).replace(".[", "[") or "(top level)"


def describe_validation_error(error: jsonschema.ValidationError) -> str:
    """One line naming the offending key, descending into oneOf/anyOf to the real cause: the
    branch whose type matches the value, and in it the most deeply nested error."""
    while error.context:
        branches: dict[Any, list[jsonschema.ValidationError]] = {}
        for sub in error.context:
            branches.setdefault(sub.relative_schema_path[0], []).append(sub)
        right_type = [
            errs
            for errs in branches.values()
            if not any(e.validator == "type" and not e.relative_path for e in errs)
        ]
        candidates = right_type[0] if len(right_type) == 1 else list(error.context)
        error = max(candidates, key=lambda e: len(e.absolute_path))
    if error.validator == "not" and error.validator_value == {"required": ["path", "train"]}:
        return (
            f"config key {key_path(error)}: has both path and train; keep path (a checkpoint "
            "to load) or train (a model the workflow trains), not both"
        )
    if error.validator == "additionalProperties":
        return f"config key {key_path(error)}: {error.message} (see config/README.md)"
    return f"config key {key_path(error)}: {error.message}"


def validation_error_from(exc: BaseException) -> jsonschema.ValidationError | None:
    """The jsonschema error inside Snakemake's WorkflowError (or the error itself)."""
    import jsonschema

    if isinstance(exc, jsonschema.ValidationError):
        return exc
    for arg in getattr(exc, "args", ()):
        if isinstance(arg, jsonschema.ValidationError):
            return arg
    cause = exc.__cause__ or exc.__context__
    return validation_error_from(cause) if cause is not None else None


def model_entries(config: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Models by name; a bare string entry is a TransformerLens name with no options."""
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


@functools.cache
def _model_alias_map() -> dict[str, str]:
    """TransformerLens' alias -> Hugging Face name map, read from its registry file without
    importing transformer_lens (which takes seconds: the Snakefile is parsed by every job)."""
    spec = importlib.util.find_spec("transformer_lens")
    if spec is None or not spec.submodule_search_locations:
        raise ConfigError("transformer_lens is not installed: run the README's setup command")
    registry = Path(next(iter(spec.submodule_search_locations))) / "supported_models.py"
    namespace: dict[str, Any] = {}
    exec(compile(registry.read_text(), str(registry), "exec"), namespace)
    aliases = {}
    for official in namespace["OFFICIAL_MODEL_NAMES"]:
        for alias in namespace["MODEL_ALIASES"].get(official, []):
            aliases[alias.lower()] = official
        aliases[official.lower()] = official
    return aliases


def official_model_name(name: str) -> str:
    """The Hugging Face name of a TransformerLens model name or alias (e.g. pythia-160m ->
    EleutherAI/pythia-160m); ConfigError naming the fix when unknown."""
    try:
        return _model_alias_map()[name.lower()]
    except KeyError:
        raise ConfigError(
            f"config key models: unknown model {name!r}; use a TransformerLens name "
            "(e.g. gpt2-small, pythia-160m) or give the entry a `path` to a local Hugging "
            "Face checkpoint"
        ) from None


def check_hub_names(entries: dict[str, dict[str, Any]]) -> None:
    """Hub models must be TransformerLens names; checked offline, before any work starts."""
    for name, entry in entries.items():
        if "path" not in entry and "train" not in entry:
            official_model_name(name)


FROZEN_LN_SUFFIX = "-frozen-ln"


def parse_ablation(variant: str) -> tuple[str, bool]:
    """'mean' -> ('mean', False); 'mean-frozen-ln' -> ('mean', True)."""
    if variant.endswith(FROZEN_LN_SUFFIX):
        return variant[: -len(FROZEN_LN_SUFFIX)], True
    return variant, False


def n_rows(data: dict[str, Any]) -> int:
    """Rows of seq_len tokens holding at least n_tokens tokens (one more if the last shard
    would otherwise hold a single row, which has no other row to resample from)."""
    rows = math.ceil(data["n_tokens"] / data["seq_len"])
    return rows + 1 if rows % data["shard_rows"] == 1 else rows


def n_shards(data: dict[str, Any]) -> int:
    return math.ceil(n_rows(data) / data["shard_rows"])


def shard_bounds(data: dict[str, Any], shard: int) -> tuple[int, int]:
    """[start, stop) rows of a shard; the last shard may be shorter."""
    if not 0 <= shard < n_shards(data):
        raise ConfigError(f"shard {shard} does not exist: there are {n_shards(data)} shards")
    start = shard * data["shard_rows"]
    return start, min(start + data["shard_rows"], n_rows(data))


def n_predictions(data: dict[str, Any]) -> int:
    """Tokens measured per model: every row predicts seq_len - 1 next tokens."""
    return n_rows(data) * (data["seq_len"] - 1)


def top_count(n_tokens: int, fraction: float) -> int:
    """Tokens in a head's top fraction of n_tokens: ceil(fraction * n_tokens), at least 1."""
    return max(1, math.ceil(fraction * n_tokens))


# A head's top-fraction selection (the paper's top 2%) averages over at least this many tokens;
# fewer and its means are noise.
MIN_TOP_TOKENS = 10


# (n_layers, n_heads) of hub models whose size the config cannot read: the paper's, so that a
# configured head out of range fails before any job starts. Other hub models are checked when
# their job loads them.
KNOWN_DIMS = {
    "gpt2": (12, 12),
    "gpt2-small": (12, 12),
    "gpt2-medium": (24, 16),
    "gpt2-large": (36, 20),
    "gpt2-xl": (48, 25),
    "pythia-70m": (6, 8),
    "pythia-160m": (12, 12),
    "pythia-410m": (24, 16),
    "pythia-1b": (16, 8),
    "pythia-1.4b": (24, 16),
    "pythia-2.8b": (32, 32),
    "llama-7b": (32, 32),
}


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


def model_dims(entry: dict[str, Any]) -> tuple[int, int] | None:
    """(n_layers, n_heads) of a model entry when the config can know it without loading it."""
    if "train" in entry:
        return entry["train"].get("n_layers", 4), entry["train"].get("n_heads", 4)
    if "path" in entry:
        cfg_file = Path(entry["path"]) / "config.json"
        if cfg_file.is_file():
            hf = json.loads(cfg_file.read_text())
            layers = _first_int(hf, LAYER_KEYS)
            heads = _first_int(hf, HEAD_KEYS)
            if layers is not None and heads is not None:
                return layers, heads
        return None
    return KNOWN_DIMS.get(entry["name"].lower())


def missing_head(model: str, layer: int, head: int, n_layers: int, n_heads: int) -> str | None:
    """Why L{layer}H{head} does not exist in a model of this size, or None when it does."""
    if 0 <= layer < n_layers and 0 <= head < n_heads:
        return None
    return f"{model} has no L{layer}H{head} ({n_layers} layers x {n_heads} heads)"


def check_run(config: dict[str, Any], entries: dict[str, dict[str, Any]]) -> None:
    """What the schema cannot check, before any work: enough tokens for the top-fraction
    selection, readable corpus files, and heads that exist in the models whose size the config
    can know (model_dims)."""
    data, fraction = config["data"], config["engine"]["top_fraction"]
    n = n_predictions(data)
    if fraction * n < MIN_TOP_TOKENS:
        need = math.ceil(MIN_TOP_TOKENS / fraction * data["seq_len"] / (data["seq_len"] - 1))
        raise ConfigError(
            f"config key data.n_tokens: {n} predicted tokens leave {fraction * n:.1f} in each "
            f"head's top {fraction:.0%} (engine.top_fraction), fewer than {MIN_TOP_TOKENS}; "
            f"raise data.n_tokens to at least {need}"
        )
    check_shard_count(data)
    check_device_dtype(config["device"], config["dtype"])
    check_frozen_ln(config)
    check_corpus_files(data["corpus"], "data.corpus")
    for name, tokenizer in (config.get("tokenizers") or {}).items():
        if "corpus" in tokenizer:
            check_corpus_files(tokenizer["corpus"], f"tokenizers.{name}.corpus")
    for name, entry in entries.items():
        check_model_entry(name, entry)
    check_distinct_heads(config)
    for name, entry in entries.items():
        dims = model_dims(entry)
        if dims is None:
            continue  # other hub models: checked when the job loads them (check_model_fits)
        for layer, head in entry.get("heads") or []:
            if missing := missing_head(name, layer, head, *dims):
                raise ConfigError(f"config key models[{name}].heads: {missing}")


def check_corpus_files(corpus: dict[str, Any], key: str) -> None:
    """A text-file corpus must be readable now, not when the tokenize job opens it."""
    if corpus.get("source") != "text_files":
        return
    if not corpus.get("files"):
        raise ConfigError(
            f"config key {key}.files: empty; list the plain-text or .jsonl files of the corpus "
            f"(or set {key}.source to hub or python_stdlib)"
        )
    for index, name in enumerate(corpus.get("files") or []):
        path = Path(name)
        problem = (
            "does not exist"
            if not path.exists()
            else "is not a file"
            if not path.is_file()
            else "is not readable"
            if not os.access(path, os.R_OK)
            else None
        )
        if problem:
            raise ConfigError(f"config key {key}.files[{index}]: {name!r} {problem}")


# --- Checks of what planning and the machine can bear (before any job) --------------------------

# Every shard of every model is one clean_cache job and one ablate job per ablation variant, and
# Snakemake holds each job in memory while it plans: 1e9 tokens in the paper's shards are
# 190,000 jobs and more than 12 minutes of planning. So a model gets at most this many shards
# (the paper: 8; the demo: 2); larger runs take larger shards (data.shard_rows).
MAX_SHARDS = 256


def check_shard_count(data: dict[str, Any]) -> None:
    """ConfigError naming data.n_tokens and data.shard_rows when a model would get more than
    MAX_SHARDS shards, with the smallest shard_rows that fits.

    Args:
        data: the config's `data` section (n_tokens, seq_len, shard_rows).
    """
    shards = n_shards(data)
    if shards <= MAX_SHARDS:
        return
    need = math.ceil(n_rows(data) / MAX_SHARDS)
    raise ConfigError(
        f"config key data.n_tokens: {data['n_tokens']:,} tokens make {shards:,} shards of "
        f"data.shard_rows={data['shard_rows']} rows per model, more than {MAX_SHARDS} (one job "
        f"each per ablation; planning them would take minutes and gigabytes); raise "
        f"data.shard_rows to at least {need} or lower data.n_tokens"
    )


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


def check_machine(config: dict[str, Any]) -> None:
    """device/dtype against this machine's CUDA devices, for a run whose jobs run here (imports
    torch, so only the workflow's start calls it, not every job's parse).

    Args:
        config: the validated workflow config.
    """
    device, dtype = config["device"], config["dtype"]
    if device == "cpu" or (device == "auto" and dtype == "float32"):
        return  # nothing this machine could lack
    import torch

    n_cuda = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if problem := device_problem(device, dtype, n_cuda):
        raise ConfigError(problem)


def check_frozen_ln(config: dict[str, Any]) -> None:
    """engine.frozen_ln reruns ablations of the run, which must therefore be among them."""
    ablations, frozen = config["ablations"], config["engine"].get("frozen_ln", [])
    for index, ablation in enumerate(frozen):
        if ablation not in ablations:
            raise ConfigError(
                f"config key engine.frozen_ln[{index}]: {ablation} is not among ablations "
                f"{ablations}; add it to ablations or drop it from engine.frozen_ln "
                f"(engine.frozen_ln: [] runs none)"
            )


# Architectures (config.json `architectures`) that TransformerLens 3.9 converts from a local
# checkpoint's config.json into a causal (decoder-only) HookedTransformer. README "Models you can
# add by path" lists those tested (tests/test_architectures.py).
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
            "config.json; see README, Models you can add by path"
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


def _head_lists(config: dict[str, Any]) -> list[tuple[str, Any]]:
    """(config key, heads list) of every heads list of models, figures and mechanisms."""
    lists = []
    for item in config.get("models", []):
        if isinstance(item, dict) and item.get("heads"):
            lists.append((f"models[{item['name']}].heads", item["heads"]))

    def targets(prefix: str, spec: Any) -> None:
        if not isinstance(spec, dict):
            return
        if spec.get("heads"):
            lists.append((f"{prefix}.heads", spec["heads"]))
        sub = spec.get("substitute")
        if isinstance(sub, dict) and sub.get("heads"):
            lists.append((f"{prefix}.substitute.heads", sub["heads"]))

    for key, spec in (config.get("figures") or {}).items():
        targets(f"figures.{key}", spec)
    for experiment, section in (config.get("mechanisms") or {}).items():
        for key, spec in (section or {}).items() if isinstance(section, dict) else ():
            if isinstance(spec, list):
                for index, item in enumerate(spec):
                    targets(f"mechanisms.{experiment}.{key}[{index}]", item)
            else:
                targets(f"mechanisms.{experiment}.{key}", spec)
    return lists


def check_distinct_heads(config: dict[str, Any]) -> None:
    """No heads list names a head twice (a figure would draw it twice, a store index it twice).

    Args:
        config: the validated workflow config.
    """
    for key, heads in _head_lists(config):
        seen = set()
        for layer, head in heads:
            if (layer, head) in seen:
                raise ConfigError(
                    f"config key {key}: L{layer}H{head} is listed twice; list it once"
                )
            seen.add((layer, head))


def check_distinct_targets(key: str, targets: list[FigureTarget]) -> None:
    """The panels of a list-valued figure (mechanisms.neurons.fig08) show different heads, also
    after substitution.

    Args:
        key: the figure's config key.
        targets: its resolved targets, in config order.
    """
    seen: dict[tuple[str, Head], int] = {}
    for index, target in enumerate(targets):
        for head in target.heads:
            if (target.model, head) in seen:
                raise ConfigError(
                    f"config key {key}[{index}]: {target.model} L{head[0]}H{head[1]} is already "
                    f"shown by {key}[{seen[(target.model, head)]}]; give each entry another head "
                    "or remove one"
                )
            seen[(target.model, head)] = index


# --- Figures: which model and heads each figure shows, with substitutes -----------------------

Head = tuple[int, int]

# Run-time picks of substitute heads (`substitute: {model, pick}`), by the paper's own criterion;
# selfrepair.analysis.substitutes computes them from the run's stores.
PICK_CRITERIA = {
    "largest_top_de": "per-head summaries: late heads by mean clean direct effect on their top tokens",
    "most_self_repressing": "reinforcement store: second-half heads by slope at the largest scale",
}
# The criteria each figure key accepts, which layers its candidates come from ("late": the
# second half of the layers, "last": the last layer, as the paper's Fig 5 head), and whether it
# shows exactly one head.
PICKABLE = {
    "fig03": (("largest_top_de",), "late", False),
    "fig05": (("largest_top_de",), "last", True),
    "fig04": (("largest_top_de",), "late", True),
    "fig16_18": (("largest_top_de",), "late", False),
    "fig07": (("largest_top_de",), "late", True),
    "fig08": (("largest_top_de",), "late", True),
    "fig15": (("largest_top_de",), "late", True),
    "fig09": (("most_self_repressing",), "late", True),
}


@dataclass(frozen=True)
class FigureTarget:
    """The model (and heads) a figure shows: the paper's, or the configured substitute when the
    paper's model or heads are not in this run. A substitute picked at run time (`pick`) has no
    heads until resolved() with its pick record (selfrepair.analysis.substitutes)."""

    key: str  # the config key under `figures`, e.g. "fig03"
    model: str
    heads: tuple[Head, ...]
    paper_model: str
    paper_heads: tuple[Head, ...]
    reason: str | None = None  # why the paper's choice is not shown; None: it is
    pick: dict[str, Any] | None = field(default=None, compare=False)  # pick_spec()
    selected_by: str | None = None  # the pick record's description, once resolved

    @property
    def substituted(self) -> bool:
        return self.reason is not None

    @property
    def picked(self) -> bool:
        """Whether the heads are picked at run time (then read them from the pick record)."""
        return self.pick is not None

    def label(self, model: str, heads: tuple[Head, ...]) -> str:
        names = ", ".join(f"L{layer}H{head}" for layer, head in heads)
        return f"{model} {names}" if names else model

    def resolved(self, record: dict[str, Any]) -> FigureTarget:
        """This target with the heads of its pick record (pick_substitute's JSON)."""
        if record.get("model") != self.model:
            raise ValueError(f"pick record for {record.get('model')!r}, target is {self.model!r}")
        return replace(self, heads=_as_heads(record["heads"]), selected_by=record["description"])

    def substitution(self) -> str | None:
        """The sentence a caption carries when a substitute is shown."""
        if not self.substituted:
            return None
        if self.picked and self.selected_by is None:
            raise ValueError(f"{self.key}: the substitute is picked at run time; resolve it first")
        shown = self.label(self.model, self.heads)
        if self.selected_by:
            shown += f", {self.selected_by},"
        return (
            f"{shown} is a substitute for the paper's "
            f"{self.label(self.paper_model, self.paper_heads)} ({self.reason})."
        )

    def announcement(self) -> str | None:
        """What the run says at its start about a substitute: substitution(), or for a pick not
        yet made, the rule that will make it."""
        if self.picked and self.selected_by is None:
            pick = self.pick
            heads = f"{pick['n']} head{'s' if pick['n'] > 1 else ''}"
            rank = f" from rank {pick['rank']}" if pick["rank"] > 1 else ""
            return (
                f"{self.model}'s {heads} by {pick['criterion']}{rank}, picked at run time, "
                f"in place of the paper's {self.label(self.paper_model, self.paper_heads)} "
                f"({self.reason})."
            )
        return self.substitution()

    def as_params(self) -> dict[str, Any]:
        """Plain types for Snakemake params (scripts rebuild nothing from it but read it)."""
        return {
            "key": self.key,
            "model": self.model,
            "heads": [list(h) for h in self.heads],
            "paper_model": self.paper_model,
            "paper_heads": [list(h) for h in self.paper_heads],
            "reason": self.reason,
            "substitution": None if self.picked and not self.selected_by else self.substitution(),
            "pick": self.pick,
        }


def target_with_pick(target: dict[str, Any], record: dict[str, Any]) -> dict[str, Any]:
    """A figure script's target params (as_params()) with the heads of its pick record and the
    caption sentence naming them and the value that selected them."""
    base = FigureTarget(
        target["key"],
        target["model"],
        _as_heads(target["heads"]),
        target["paper_model"],
        _as_heads(target["paper_heads"]),
        reason=target["reason"],
        pick=target["pick"],
    )
    return base.resolved(record).as_params()


def _as_heads(value: Any) -> tuple[Head, ...]:
    return tuple((int(layer), int(head)) for layer, head in (value or []))


def candidate_layers(
    n_layers: int, layers: str, mlp_layer: int | None = None, parallel: bool | None = None
) -> list[int]:
    """Layers a pick may choose heads from: "late" (the second half, n_layers // 2 and up) or
    "last"; with mlp_layer, only those whose heads that MLP reads (below it, or in its own
    layer when attention and MLP are sequential; unknown counts as parallel)."""
    chosen = range(n_layers // 2, n_layers) if layers == "late" else range(n_layers - 1, n_layers)
    if mlp_layer is None:
        return list(chosen)
    mlp = mlp_layer % n_layers
    return [layer for layer in chosen if layer < mlp or (layer == mlp and parallel is False)]


def pick_spec(
    key: str,
    base_key: str,
    sub: dict[str, Any],
    paper_heads: tuple[Head, ...],
    entry: dict[str, Any] | None,
    mlp_layer: int | None = None,
    parallel: bool | None = None,
) -> dict[str, Any]:
    """The checked pick of `substitute: {model, pick, n, rank}` at config key `key` (base_key:
    the figure key, e.g. fig08): criterion, n heads, rank of the first, candidate layers and the
    MLP constraint; ConfigError in one line naming the key otherwise."""
    if "heads" in sub:
        raise ConfigError(f"config key {key}.substitute: give either heads or pick, not both")
    if base_key not in PICKABLE:
        raise ConfigError(
            f"config key {key}.substitute.pick: {base_key} shows no heads to pick; remove pick"
        )
    allowed, layers, single = PICKABLE[base_key]
    criterion = sub["pick"]
    if criterion not in allowed:
        raise ConfigError(
            f"config key {key}.substitute.pick: unknown criterion {criterion!r} for {base_key}; "
            f"use {' or '.join(allowed)}"
        )
    n = int(sub.get("n", max(1, len(paper_heads))))
    if single and n != 1:
        raise ConfigError(f"config key {key}.substitute.n: {base_key} shows one head; set n: 1")
    spec = {
        "criterion": criterion,
        "n": n,
        "rank": int(sub.get("rank", 1)),
        "layers": layers,
        "mlp_layer": mlp_layer,
        "parallel": parallel,
    }
    dims = model_dims(entry) if entry is not None else None
    if dims is not None:
        measured = {tuple(h) for h in entry.get("heads") or []}
        n_candidates = sum(
            1
            for layer in candidate_layers(dims[0], layers, mlp_layer, parallel)
            for head in range(dims[1])
            if not measured or (layer, head) in measured
        )
        if n_candidates < spec["rank"] + n - 1:
            raise ConfigError(
                f"config key {key}.substitute: {sub['model']} has {n_candidates} candidate heads "
                f"for {criterion}, fewer than rank + n - 1 = {spec['rank'] + n - 1}"
            )
    return spec


def unavailable(
    entries: dict[str, dict[str, Any]], model: str, heads: tuple[Head, ...]
) -> str | None:
    """Why (model, heads) cannot be shown from this run, or None when it can. Head ranges are
    checked where the config knows them (trained models, explicit `heads` lists); a hub
    model's size is checked against the data when the figure is drawn."""
    if model not in entries:
        return f"{model} is not among this run's models"
    entry = entries[model]
    measured = {tuple(h) for h in entry.get("heads", [])}
    dims = entry.get("train")
    for layer, head in heads:
        if measured and (layer, head) not in measured:
            return f"L{layer}H{head} is not among the heads measured in {model}"
        if dims is not None:
            missing = missing_head(
                model, layer, head, dims.get("n_layers", 4), dims.get("n_heads", 4)
            )
            if missing:
                return missing
    return None


def figure_target(config: dict[str, Any], key: str) -> FigureTarget:
    """Resolve figures.<key> (model, heads, substitute) against the run's models; ConfigError
    in one line naming the key when neither the paper's choice nor a substitute is available."""
    entries = model_entries(config)
    spec = config.get("figures", {}).get(key)
    if not isinstance(spec, dict) or "model" not in spec:
        raise ConfigError(f"config key figures.{key}.model: missing; name the model to show")
    paper_model, paper_heads = spec["model"], _as_heads(spec.get("heads"))
    reason = unavailable(entries, paper_model, paper_heads)
    if reason is None:
        return FigureTarget(key, paper_model, paper_heads, paper_model, paper_heads)
    sub = spec.get("substitute")
    if sub is None:
        raise ConfigError(
            f"config key figures.{key}.model: {reason}; add it to models or set "
            f"figures.{key}.substitute"
        )
    sub_heads = _as_heads(sub.get("heads"))
    sub_reason = unavailable(entries, sub["model"], sub_heads)
    if sub_reason is not None:
        raise ConfigError(f"config key figures.{key}.substitute: {sub_reason}")
    if "pick" in sub:
        pick = pick_spec(f"figures.{key}", key, sub, paper_heads, entries.get(sub["model"]))
        return FigureTarget(key, sub["model"], (), paper_model, paper_heads, reason, pick)
    if paper_heads and not sub_heads:
        raise ConfigError(
            f"config key figures.{key}.substitute.heads: missing; name the heads of "
            f"{sub['model']} to show in place of the paper's, or pick them (config/README.md)"
        )
    return FigureTarget(key, sub["model"], sub_heads, paper_model, paper_heads, reason)


def figure_targets(config: dict[str, Any]) -> dict[str, FigureTarget]:
    """Every figures.<key> that names a model (the single-model figures), resolved."""
    return {
        key: figure_target(config, key)
        for key, spec in config.get("figures", {}).items()
        if isinstance(spec, dict) and "model" in spec
    }


def other_models(config: dict[str, Any]) -> list[str]:
    """The models of Figs 21-24: figures.fig21_24.models, or (null) every model of the run
    except the one Fig 2 shows."""
    entries = model_entries(config)
    chosen = config.get("figures", {}).get("fig21_24", {}).get("models")
    if chosen is None:
        shown = figure_target(config, "fig02").model
        return [m for m in entries if m != shown]
    for i, model in enumerate(chosen):
        if model not in entries:
            raise ConfigError(
                f"config key figures.fig21_24.models[{i}]: {model} is not among this run's models"
            )
    return list(chosen)


def frozen_ln_ablation(config: dict[str, Any]) -> str | None:
    """The ablation whose frozen-LayerNorm variant the frozen-LN figure compares with:
    figures.ablation when engine.frozen_ln runs it, else the first of engine.frozen_ln; None
    when no frozen variant is run."""
    frozen = config.get("engine", {}).get("frozen_ln", [])
    shown = config.get("figures", {}).get("ablation", "resample")
    if shown in frozen:
        return shown
    return frozen[0] if frozen else None


def figure_ablation(config: dict[str, Any]) -> str:
    """figures.ablation, which must be one of the run's ablations."""
    shown = config.get("figures", {}).get("ablation", "resample")
    if shown not in config.get("ablations", []):
        raise ConfigError(
            f"config key figures.ablation: {shown} is not among ablations "
            f"{config.get('ablations')}; add it there or show one of those"
        )
    return shown


def check_target_heads(target: dict[str, Any], n_layers: int, n_heads: int) -> None:
    """A figure's heads (FigureTarget.as_params()) against the model's size, known once its
    data are read (hub models); ConfigError naming the key otherwise."""
    key = f"figures.{target['key']}" + (".substitute" if target["substitution"] else "")
    for layer, head in target["heads"]:
        if missing := missing_head(target["model"], layer, head, n_layers, n_heads):
            raise ConfigError(f"config key {key}.heads: {missing}")


# --- Hub access: can the hub or the local cache serve every hub model and data set? ----------

WEIGHT_SUFFIXES = (".safetensors", ".bin")
PROXY_VARIABLES = ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy")


def _hub_snapshot_files(repo_id: str, repo_type: str) -> list[str]:
    """Names of the files in the hub cache's snapshot of a repo (refs/main), [] when none."""
    from huggingface_hub import constants

    repo = Path(constants.HF_HUB_CACHE) / f"{repo_type}s--{repo_id.replace('/', '--')}"
    ref = repo / "refs" / "main"
    if not ref.is_file():
        return []
    snapshot = repo / "snapshots" / ref.read_text().strip()
    return [p.relative_to(snapshot).as_posix() for p in snapshot.rglob("*") if p.is_file()]


def model_cached(repo_id: str) -> bool:
    """A hub model's snapshot holds what from_pretrained reads: config, weights, tokenizer."""
    files = _hub_snapshot_files(repo_id, "model")
    return (
        "config.json" in files
        and any(f.endswith(WEIGHT_SUFFIXES) for f in files)
        and any(f.startswith("tokenizer") for f in files)
    )


def dataset_cached(repo_id: str) -> bool:
    """A hub data set is in the hub cache with data files (`hf download`), or in the datasets
    cache as an online `datasets.load_dataset` leaves it: where the corpus loader would read it
    without the network (corpus.resolve_hub_dataset)."""
    from selfrepair.data.corpus import resolve_hub_dataset

    where = resolve_hub_dataset(repo_id)
    return where["kind"] == "hub_snapshot" or where["revision"] is not None


def hub_reachable(endpoint: str, timeout: float = 3.0) -> bool:
    """Whether a TCP connection to the hub endpoint opens within `timeout` seconds (a proxy in
    the environment counts as reachable: the connection would go through it)."""
    import socket
    from urllib.parse import urlparse

    if any(os.environ.get(v) for v in PROXY_VARIABLES):
        return True
    url = urlparse(endpoint)
    try:
        with socket.create_connection(
            (url.hostname, url.port or (443 if url.scheme == "https" else 80)), timeout=timeout
        ):
            return True
    except OSError:
        return False


def hub_needs(config: dict[str, Any], entries: dict[str, dict[str, Any]]) -> list[str]:
    """What this run reads from the Hugging Face hub and the cache lacks: 'model <name>
    (<repo>)' and 'data set <repo>' entries. Local checkpoints, trained models and local corpora
    need nothing."""
    needs = []
    for name, entry in entries.items():
        if "path" not in entry and "train" not in entry:
            repo = official_model_name(name)
            if not model_cached(repo):
                needs.append(f"model {name} ({repo})")
    corpus = config["data"]["corpus"]
    path = (corpus.get("hub") or {}).get("path")
    if corpus.get("source") == "hub" and path:
        from selfrepair.data.corpus import is_local_path

        if is_local_path(path):
            if not Path(path).expanduser().exists():
                raise ConfigError(
                    f"config key data.corpus.hub.path: {path!r} does not exist; give a local "
                    "copy (folder, save_to_disk folder or data file) or a hub data set name"
                )
        elif not dataset_cached(path):
            needs.append(f"data set {path}")
    return needs


def check_hub_access(
    config: dict[str, Any], entries: dict[str, dict[str, Any]], reachable=hub_reachable
) -> None:
    """Stop before any job when a hub model or data set is neither in the local cache nor
    reachable: offline (HF_HUB_OFFLINE) nothing is fetched, and without the network the first
    job would retry connections for a minute. Cheap: file checks, and one connection attempt
    (3 s at most) only when something is missing and the hub is allowed."""
    from huggingface_hub import constants

    needs = hub_needs(config, entries)
    if not needs:
        return
    offline = constants.HF_HUB_OFFLINE
    if not offline and reachable(constants.ENDPOINT):
        return
    why = (
        "HF_HUB_OFFLINE=1 allows no download"
        if offline
        else f"HF_HUB_OFFLINE is unset and {constants.ENDPOINT} cannot be reached"
    )
    raise ConfigError(
        f"{', '.join(needs)}: not in the Hugging Face cache (HF_HOME={constants.HF_HOME}) and "
        f"{why}; fill the cache (`hf download`, or tools/offline_hub.py for random weights) "
        "or set models / data.corpus to local copies"
    )
