"""Configuration helpers shared by the Snakefile and the scripts: validation messages that name
the key, model entries, and the row/shard layout that every stage agrees on."""

from __future__ import annotations

import functools
import importlib.util
import json
import math
import os
from dataclasses import dataclass
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


def model_dims(entry: dict[str, Any]) -> tuple[int, int] | None:
    """(n_layers, n_heads) of a model entry when the config can know it without loading it."""
    if "train" in entry:
        return entry["train"].get("n_layers", 4), entry["train"].get("n_heads", 4)
    if "path" in entry:
        cfg_file = Path(entry["path"]) / "config.json"
        if cfg_file.is_file():
            hf = json.loads(cfg_file.read_text())
            layers = hf.get("num_hidden_layers", hf.get("n_layer"))
            heads = hf.get("num_attention_heads", hf.get("n_head"))
            if isinstance(layers, int) and isinstance(heads, int):
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
    check_corpus_files(data["corpus"], "data.corpus")
    for name, tokenizer in (config.get("tokenizers") or {}).items():
        if "corpus" in tokenizer:
            check_corpus_files(tokenizer["corpus"], f"tokenizers.{name}.corpus")
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


# --- Figures: which model and heads each figure shows, with substitutes -----------------------

Head = tuple[int, int]


@dataclass(frozen=True)
class FigureTarget:
    """The model (and heads) a figure shows: the paper's, or the configured substitute when the
    paper's model or heads are not in this run."""

    key: str  # the config key under `figures`, e.g. "fig03"
    model: str
    heads: tuple[Head, ...]
    paper_model: str
    paper_heads: tuple[Head, ...]
    reason: str | None = None  # why the paper's choice is not shown; None: it is

    @property
    def substituted(self) -> bool:
        return self.reason is not None

    def label(self, model: str, heads: tuple[Head, ...]) -> str:
        names = ", ".join(f"L{layer}H{head}" for layer, head in heads)
        return f"{model} {names}" if names else model

    def substitution(self) -> str | None:
        """The sentence a caption carries when a substitute is shown."""
        if not self.substituted:
            return None
        return (
            f"{self.label(self.model, self.heads)} is a substitute for the paper's "
            f"{self.label(self.paper_model, self.paper_heads)} ({self.reason})."
        )

    def as_params(self) -> dict[str, Any]:
        """Plain types for Snakemake params (scripts rebuild nothing from it but read it)."""
        return {
            "key": self.key,
            "model": self.model,
            "heads": [list(h) for h in self.heads],
            "paper_model": self.paper_model,
            "paper_heads": [list(h) for h in self.paper_heads],
            "substitution": self.substitution(),
        }


def _as_heads(value: Any) -> tuple[Head, ...]:
    return tuple((int(layer), int(head)) for layer, head in (value or []))


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
    if paper_heads and not sub_heads:
        raise ConfigError(
            f"config key figures.{key}.substitute.heads: missing; name the heads of "
            f"{sub['model']} to show in place of the paper's"
        )
    sub_reason = unavailable(entries, sub["model"], sub_heads)
    if sub_reason is not None:
        raise ConfigError(f"config key figures.{key}.substitute: {sub_reason}")
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
    cache as an online `datasets.load_dataset` leaves it (<org>___<name>/*/*/*)."""
    from huggingface_hub import constants

    if any(
        f != "README.md" and not f.startswith(".") for f in _hub_snapshot_files(repo_id, "dataset")
    ):
        return True
    root = Path(os.environ.get("HF_DATASETS_CACHE") or Path(constants.HF_HOME) / "datasets")
    org, _, name = repo_id.rpartition("/")
    folder = root / "___".join(filter(None, [org, name]))
    return any((p / "dataset_info.json").is_file() for p in folder.glob("*/*/*"))


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
        local = Path(path).expanduser()
        if local.exists() or path.startswith((".", "/", "~")):
            if not local.exists():
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
