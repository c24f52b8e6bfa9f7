"""Which heads the neuron experiment ablates and which MLP layer it watches for each (Probe),
and the hook names and coordinates that go with them."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from selfrepair.engine.inputs import normalize_heads
from selfrepair.models.forward import restart_point
from selfrepair.variables import head_label

if TYPE_CHECKING:
    from transformer_lens import HookedTransformer

__all__ = ["Probe", "out_hook", "post_hook", "probe_coords", "resolve_probes"]


@dataclass(frozen=True)
class Probe:
    """A head to ablate and the MLP layer whose neurons are watched."""

    layer: int
    head: int
    mlp_layer: int

    @property
    def label(self) -> str:
        return head_label(self.layer, self.head)


def resolve_probes(
    model: HookedTransformer, heads: Iterable[Sequence[int]], mlp_layer: int = -1
) -> list[Probe]:
    """Probes for (layer, head) or (layer, head, mlp_layer) items; mlp_layer counts from the end
    when negative. Fails naming the head when it or its MLP layer does not exist, or when the MLP
    layer does not read the head's output (below it, or beside it in a parallel block)."""
    n_layers = model.cfg.n_layers
    if model.cfg.attn_only:
        raise ValueError(f"{model.cfg.model_name} has no MLP layers: neurons need one")
    probes = []
    for item in heads:
        layer, head = int(item[0]), int(item[1])
        mlp = int(item[2]) if len(item) > 2 else int(mlp_layer)
        normalize_heads(model, [(layer, head)])  # fails naming an out-of-range head
        if not -n_layers <= mlp < n_layers:
            raise ValueError(
                f"MLP layer {mlp} is out of range: {model.cfg.model_name} has {n_layers} layers"
            )
        mlp %= n_layers
        sequential = restart_point(model) == "resid_mid"
        if mlp < layer or (mlp == layer and not sequential):
            raise ValueError(
                f"the MLP of layer {mlp} does not read the output of head {head_label(layer, head)} in "
                f"{model.cfg.model_name}: choose a later MLP layer"
                + ("" if sequential else " (attention and MLP of a layer run in parallel)")
            )
        probe = Probe(layer, head, mlp)
        if probe in probes:
            raise ValueError(f"head {head_label(layer, head)} with MLP layer {mlp} is listed twice")
        probes.append(probe)
    if not probes:
        raise ValueError("no heads given: list at least one (layer, head)")
    return probes


def post_hook(mlp_layer: int) -> str:
    """The hook of the MLP's post-activations (one per neuron)."""
    return f"blocks.{mlp_layer}.mlp.hook_post"


def out_hook(mlp_layer: int) -> str:
    """The hook of the MLP layer's output."""
    return f"blocks.{mlp_layer}.hook_mlp_out"


def probe_coords(probes: Sequence[Probe]) -> dict[str, tuple[str, list]]:
    """The head coordinate (labels) with each probe's layer, head and MLP layer beside it."""
    return {
        "head": ("head", [p.label for p in probes]),
        "head_layer": ("head", [p.layer for p in probes]),
        "head_index": ("head", [p.head for p in probes]),
        "mlp_layer": ("head", [p.mlp_layer for p in probes]),
    }
