"""mechanisms: the measurements behind the paper's mechanism figures: neurons (Figs 7, 8, 15),
LayerNorm and residual norms (Figs 4, 5, 16-18), self-reinforcement (Figs 9, 19)."""

from selfrepair.mechanisms.neurons import (
    Probe,
    neuron_direct_effects,
    resolve_probes,
    select_neuron_tokens,
    sum_error,
)
from selfrepair.mechanisms.norms import norm_ratios, residual_norms
from selfrepair.mechanisms.reinforcement import (
    reinforcement_heads,
    reinforcement_with_classes,
    second_half_heads,
    self_reinforcement,
)

__all__ = [
    "Probe",
    "neuron_direct_effects",
    "norm_ratios",
    "reinforcement_heads",
    "reinforcement_with_classes",
    "residual_norms",
    "resolve_probes",
    "second_half_heads",
    "select_neuron_tokens",
    "self_reinforcement",
    "sum_error",
]
