"""models: loading TransformerLens models (loading), building random ones and the demo's (builders),
the fused blocks (blocks), the clean pass (forward) and the correct-token readout
(readout). FLOP counts from shapes: selfrepair/flops.py."""

from selfrepair.models.builders import FAMILIES, random_model
from selfrepair.models.forward import CleanPass, NonFiniteActivation, check_supported, clean_pass
from selfrepair.models.loading import (
    load_local_checkpoint,
    load_model,
    resolve_device,
    resolve_dtype,
)
from selfrepair.models.readout import Readout, readout

__all__ = [
    "FAMILIES",
    "CleanPass",
    "NonFiniteActivation",
    "Readout",
    "check_supported",
    "clean_pass",
    "load_local_checkpoint",
    "load_model",
    "random_model",
    "readout",
    "resolve_device",
    "resolve_dtype",
]
