"""selfrepair: the shared computation of the self-repair workflow (Rushing & Nanda, 2024).

The public API below is re-exported here lazily (PEP 562): `from selfrepair import measure_heads`
imports `selfrepair.engine.self_repair` (and torch) only when asked, because the analysis
environment imports light subpackages (`selfrepair.plots`, `selfrepair.analysis`,
`selfrepair.config`) through this file and has no torch. ARCHITECTURE.md maps the rest.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

__version__ = "0.1.0"

# public name -> the module that defines it
_EXPORTS = {
    # models: loading a HookedTransformer
    "load_model": "selfrepair.models.loading",
    "load_local_checkpoint": "selfrepair.models.loading",
    "random_model": "selfrepair.models.builders",
    # engine: the measurements
    "measure_heads": "selfrepair.engine.self_repair",
    "clean_direct_effects": "selfrepair.engine.clean",
    # analysis: per-head reductions (pure: xarray in, xarray/pandas out)
    "head_summary": "selfrepair.analysis.reduce",
    "head_table": "selfrepair.analysis.tables",
    "head_intervals": "selfrepair.analysis.intervals",
    # data: corpora and rows of tokens
    "documents": "selfrepair.data.sources",
    "pack_rows": "selfrepair.data.tokens",
    "load_tokenizer": "selfrepair.data.tokens",
    # stores
    "open_tokens": "selfrepair.stages.data",
    "open_zarr": "selfrepair.stages.store",
    "open_shards": "selfrepair.stages.store",
    "write_zarr": "selfrepair.stages.store",
}

__all__ = [  # _EXPORTS' names, written out for tools that read __all__ statically
    "__version__",
    "load_model",
    "load_local_checkpoint",
    "random_model",
    "measure_heads",
    "clean_direct_effects",
    "head_summary",
    "head_table",
    "head_intervals",
    "documents",
    "pack_rows",
    "load_tokenizer",
    "open_tokens",
    "open_zarr",
    "open_shards",
    "write_zarr",
]


def __getattr__(name: str):
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'selfrepair' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_EXPORTS})


if TYPE_CHECKING:  # for type checkers and IDEs only; never executed
    from selfrepair.analysis.intervals import head_intervals
    from selfrepair.analysis.reduce import head_summary
    from selfrepair.analysis.tables import head_table
    from selfrepair.data.sources import documents
    from selfrepair.data.tokens import load_tokenizer, pack_rows
    from selfrepair.engine.clean import clean_direct_effects
    from selfrepair.engine.self_repair import measure_heads
    from selfrepair.models.builders import random_model
    from selfrepair.models.loading import load_local_checkpoint, load_model
    from selfrepair.stages.data import open_tokens
    from selfrepair.stages.store import open_shards, open_zarr, write_zarr
