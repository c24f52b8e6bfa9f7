"""reference: slow, obvious references (full forward passes with hooks) that the tests check the
engine and the mechanism passes against and the benchmark times the engine against. They never
call the engine's code."""

from selfrepair.reference.full_forward import full_forward_measure_heads
from selfrepair.reference.heads import reference_clean_direct_effects, reference_measure_heads
from selfrepair.reference.mechanisms import (
    reference_neuron_effects,
    reference_norms,
    reference_reinforcement,
)

__all__ = [
    "full_forward_measure_heads",
    "reference_clean_direct_effects",
    "reference_measure_heads",
    "reference_neuron_effects",
    "reference_norms",
    "reference_reinforcement",
]
