"""The models the project knows by name, on the package's ground floor: it imports nothing from
selfrepair and no torch, so the config checks, the data, the benchmarks and the tools all read it.

- `Shapes`: a model's sizes, the one shape class (the FLOP counts of selfrepair/flops.py, the
  memory and disk estimates of config/memory.py and config/disk.py, the store sizes of
  config/store_bytes.py). A size the config cannot know is left at its default.
- `PAPER_MODELS`: the paper's models by TransformerLens name, each with its official (Hugging
  Face) name, the family of its random stand-in (models.builders) and its shapes, from its
  Hugging Face config.json.
- `official_model_name`: TransformerLens' alias -> Hugging Face name, read from its registry file
  without importing transformer_lens (seconds; the Snakefile is parsed by every job).
"""

from __future__ import annotations

import functools
import importlib.util
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

__all__ = [
    "ALIASES",
    "PAPER_MODELS",
    "CatalogueError",
    "PaperModel",
    "Shapes",
    "official_model_name",
    "paper_model",
]


class CatalogueError(ValueError):
    """A model name the catalogue cannot resolve, in one line naming the fix (selfrepair.config
    turns it into a ConfigError)."""


@dataclass(frozen=True, kw_only=True)
class Shapes:
    """A model's sizes; d_head 0 means d_model // n_heads, d_mlp None unknown (a hub model whose
    config.json is not cached), n_positions the learned position embeddings' rows (0: rotary)."""

    n_layers: int
    n_heads: int = 0
    d_model: int = 0
    d_head: int = 0
    d_mlp: int | None = None
    d_vocab: int = 0
    n_ctx: int = 0
    n_positions: int = 0
    n_kv_heads: int | None = None  # grouped-query attention; None means n_heads
    gated_mlp: bool = False
    parallel_attn_mlp: bool = False
    attn_only: bool = False
    tied: bool = True  # the Hugging Face checkpoint ties its unembedding to the embedding

    def __post_init__(self) -> None:
        if not self.d_head and self.n_heads:
            object.__setattr__(self, "d_head", self.d_model // self.n_heads)

    @classmethod
    def of(cls, cfg: Any) -> Shapes:
        """The shapes of a HookedTransformerConfig (read, not imported)."""
        return cls(
            n_layers=cfg.n_layers,
            d_model=cfg.d_model,
            n_heads=cfg.n_heads,
            d_head=cfg.d_head,
            d_mlp=cfg.d_mlp or 0,
            d_vocab=cfg.d_vocab,
            n_kv_heads=cfg.n_key_value_heads,
            gated_mlp=bool(cfg.gated_mlp),
            parallel_attn_mlp=bool(cfg.parallel_attn_mlp),
            attn_only=bool(cfg.attn_only),
        )

    def dims(self, *names: str) -> dict[str, Any]:
        """The named sizes as keyword arguments (e.g. for models.builders.random_model)."""
        known = {f.name for f in fields(self)}
        return {name: getattr(self, name) for name in names if name in known}

    @property
    def heads(self) -> int:
        return self.n_layers * self.n_heads

    @property
    def sequential(self) -> bool:
        """The MLP of a layer reads the stream its own attention wrote (GPT-2, Llama)."""
        return not (self.parallel_attn_mlp or self.attn_only)

    def parameters(self) -> int:
        """The HookedTransformer's: embedding and unembedding (always two matrices), learned
        positions and every block's attention and MLP weights."""
        d = self.d_model
        block = 4 * d * d + (3 if self.gated_mlp else 2) * d * (self.d_mlp or 0)
        return 2 * self.d_vocab * d + self.n_positions * d + self.n_layers * block

    def loading_parameters(self) -> int:
        """Held at once while loading: the Hugging Face model's (a tied unembedding once) and
        the HookedTransformer's."""
        return 2 * self.parameters() - (self.d_vocab * self.d_model if self.tied else 0)


@dataclass(frozen=True)
class PaperModel:
    """A paper model: its Hugging Face name (as TransformerLens resolves it), the family of its
    random stand-in (models.builders.FAMILIES) and its shapes."""

    official: str
    family: str
    shapes: Shapes


def _gpt2(official: str, n_layers: int, n_heads: int, d_model: int) -> PaperModel:
    """GPT-2 (openai-community): vocabulary 50,257, 1,024 learned positions, MLP 4 d_model."""
    shapes = Shapes(n_layers=n_layers, n_heads=n_heads, d_model=d_model, d_mlp=4 * d_model,
                    d_vocab=50257, n_ctx=1024, n_positions=1024)  # fmt: skip
    return PaperModel(official, "gpt2", shapes)


def _pythia(size: str, n_layers: int, n_heads: int, d_model: int) -> PaperModel:
    """Pythia (EleutherAI, final checkpoint): 50,304 unembedding rows, 2,048 rotary positions,
    parallel attention and MLP, an untied unembedding."""
    shapes = Shapes(n_layers=n_layers, n_heads=n_heads, d_model=d_model, d_mlp=4 * d_model,
                    d_vocab=50304, n_ctx=2048, parallel_attn_mlp=True, tied=False)  # fmt: skip
    return PaperModel(f"EleutherAI/pythia-{size}", "pythia", shapes)


# By TransformerLens name (lower case). Llama-7B: its converted config.json (32 x 32 heads of 128,
# gated SiLU MLP of 11008, vocabulary 32,000, no grouped-query attention); TransformerLens 3.9
# loads it only as a local checkpoint (config/paper-llama.yaml's `path`).
PAPER_MODELS = {
    "gpt2-small": _gpt2("gpt2", 12, 12, 768),
    "gpt2-medium": _gpt2("gpt2-medium", 24, 16, 1024),
    "gpt2-large": _gpt2("gpt2-large", 36, 20, 1280),
    "gpt2-xl": _gpt2("gpt2-xl", 48, 25, 1600),
    "pythia-70m": _pythia("70m", 6, 8, 512),
    "pythia-160m": _pythia("160m", 12, 12, 768),
    "pythia-410m": _pythia("410m", 24, 16, 1024),
    "pythia-1b": _pythia("1b", 16, 8, 2048),
    "pythia-1.4b": _pythia("1.4b", 24, 16, 2048),
    "pythia-2.8b": _pythia("2.8b", 32, 32, 2560),
    "llama-7b": PaperModel(
        "llama-7b-hf",
        "llama",
        Shapes(
            n_layers=32,
            n_heads=32,
            d_model=4096,
            d_mlp=11008,
            d_vocab=32000,
            n_ctx=2048,
            gated_mlp=True,
            tied=False,
        ),
    ),  # fmt: skip
}
# Other TransformerLens names of the same models.
ALIASES = {"gpt2": "gpt2-small"}


def paper_model(name: str) -> PaperModel | None:
    """The catalogue's entry of a TransformerLens name or alias (any case), or None."""
    key = name.lower()
    return PAPER_MODELS.get(ALIASES.get(key, key))


@functools.cache
def _model_alias_map() -> dict[str, str]:
    """TransformerLens' alias -> Hugging Face name map, from its registry file."""
    spec = importlib.util.find_spec("transformer_lens")
    if spec is None or not spec.submodule_search_locations:
        raise CatalogueError("transformer_lens is not installed: run the README's setup command")
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
    EleutherAI/pythia-160m); CatalogueError naming the fix when unknown."""
    try:
        return _model_alias_map()[name.lower()]
    except KeyError:
        raise CatalogueError(
            f"config key models: unknown model {name!r}; use a TransformerLens name "
            "(e.g. gpt2-small, pythia-160m) or give the entry a `path` to a local Hugging "
            "Face checkpoint"
        ) from None
