"""models: loading TransformerLens models (loading), building random ones and the demo's (builders),
the fused blocks (blocks), the clean pass (forward) and the correct-token readout (readout); the
TransformerLens-free stand-in (standin) and the processed-weights file it is read from
(processed). FLOP counts from shapes: selfrepair/flops.py.

The names below are imported when first used, so that importing one module of the package (the
stand-in's jobs) does not import TransformerLens through loading and builders."""

import importlib

_WHERE = {
    "FAMILIES": "builders",
    "random_model": "builders",
    "CleanPass": "forward",
    "NonFiniteActivation": "forward",
    "check_supported": "forward",
    "clean_pass": "forward",
    "load_local_checkpoint": "loading",
    "load_model": "loading",
    "resolve_device": "loading",
    "resolve_dtype": "loading",
    "Readout": "readout",
    "readout": "readout",
}

__all__ = sorted(_WHERE)


def __getattr__(name: str):
    if name not in _WHERE:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"selfrepair.models.{_WHERE[name]}"), name)
    globals()[name] = value
    return value
