"""engine: per-head self-repair (self_repair.measure_heads), the one ablation routine it and the
mechanism passes share (ablation), and the clean direct effects (clean)."""

from selfrepair.engine.ablation import (
    AblationChunk,
    ablated_final,
    ablated_z,
    ablation_chunks,
    finish_from,
    first_rows,
    head_output,
    mean_z,
    resample_source,
)
from selfrepair.engine.clean import clean_direct_effects, decomposition_error, total_direct_effect
from selfrepair.engine.inputs import normalize_heads, validate_tokens
from selfrepair.engine.self_repair import measure_heads

__all__ = [
    "AblationChunk",
    "ablated_final",
    "ablated_z",
    "ablation_chunks",
    "clean_direct_effects",
    "decomposition_error",
    "finish_from",
    "first_rows",
    "head_output",
    "mean_z",
    "measure_heads",
    "normalize_heads",
    "resample_source",
    "total_direct_effect",
    "validate_tokens",
]
