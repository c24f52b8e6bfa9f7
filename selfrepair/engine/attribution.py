"""Who repairs whom: each downstream component's share of an ablated head's self-repair.

Inside an ablated pass of head h (engine.self_repair.ablated_pass), every component c that reads
h's output changes its direct effect on the correct-token logit:

    dDE_c = (out_c(ablated) - out_c(clean)) . u / s        (s: the clean final-LN scale)

for c a head of a later layer (its z' - z contracted with W_O[c] . u, so no per-head residual
vector is ever formed), an MLP layer h's ablation reaches, and the final LayerNorm (c = LN:
sr_ln). Summed over the heads they give sr_heads, over the MLPs sr_mlps, and with LN the
self-repair (Eq. 2), which the tests check per token.

`RepairSums` reduces them without keeping [head x component x token]: per (h, c) the sum over all
tokens and over h's top tokens (a mask chosen before the ablation, from the clean cache, so the
selection is global over shards), and optionally (keep_tokens) every component's dDE on h's top
tokens, for a few heads.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import numpy as np
import torch
import xarray as xr
from jaxtyping import Bool, Float
from torch import Tensor

from selfrepair.models.forward import CleanPass
from selfrepair.variables import (
    REPAIR_TOTALS,
    component_kinds,
    component_names,
    downstream,
    n_components,
)

if TYPE_CHECKING:
    from transformer_lens import HookedTransformer

__all__ = [
    "RepairSums",
    "flat_totals",
    "component_effects",
    "component_hooks",
    "component_coords",
    "head_directions",
]


def head_directions(
    model: HookedTransformer, cp: CleanPass, layer: int
) -> Float[Tensor, "batch pos head d_head"]:
    """W_O[h] . u of every head of `layer`: a head's direct effect is z . this / s."""
    return torch.einsum("hdm,bpm->bphd", model.blocks[layer].attn.W_O.float(), cp.u)


def component_hooks(
    model: HookedTransformer,
    cp: CleanPass,
    layer: int,
    group: int,
    directions: Callable[[int], Tensor],
    parts: dict[int, Tensor],
) -> list[tuple[str, Callable]]:
    """hook_z hooks of the layers after `layer` that put each later head's dDE (times the clean
    scale) of a stacked group into parts[later] ([group, batch, pos, head])."""

    def on_z(z, hook, later):
        z = z.reshape(group, *cp.z[later].shape).float()
        parts[later] = torch.einsum("gbphd,bphd->gbph", z - cp.z[later].float(), directions(later))

    return [
        (f"blocks.{later}.attn.hook_z", lambda z, hook, later=later: on_z(z, hook, later))
        for later in range(layer + 1, model.cfg.n_layers)
    ]


def component_effects(
    model: HookedTransformer,
    scale: Float[Tensor, "batch pos"],
    head_parts: dict[int, Float[Tensor, "group batch pos head"]],
    mlp_parts: dict[int, Float[Tensor, "group batch pos"]],
    sr_ln: Float[Tensor, "group batch pos"],
) -> Float[Tensor, "group batch pos component"]:
    """Every component's dDE on one axis (variables.component_names), 0 where it is not
    downstream; head and MLP parts are divided by the clean scale here."""
    n_layers, n_heads = model.cfg.n_layers, model.cfg.n_heads
    out = sr_ln.new_zeros(*sr_ln.shape, n_components(n_layers, n_heads))
    for later, part in head_parts.items():
        out[..., later * n_heads : (later + 1) * n_heads] = part / scale[..., None]
    for later, part in mlp_parts.items():
        out[..., n_layers * n_heads + later] = part / scale
    out[..., -1] = sr_ln
    return out


def component_coords(model: HookedTransformer) -> dict[str, tuple]:
    """The component coordinate and its layer and kind, and the downstream table."""
    n_layers, n_heads = model.cfg.n_layers, model.cfg.n_heads
    names = component_names(n_layers, n_heads)
    layers = [i // n_heads for i in range(n_layers * n_heads)] + list(range(n_layers)) + [-1]
    return {
        "component": ("component", names),
        "component_layer": ("component", np.array(layers)),
        "component_kind": ("component", component_kinds(n_layers, n_heads)),
    }


class RepairSums:
    """Per (ablated head, component) sums of dDE over all tokens and over the head's top
    tokens, with the same sums of REPAIR_TOTALS, in float64; optionally every top token's dDE.

    Args:
        model: the model measured.
        top: bool [layer, head, batch, pos] over the rows measured: each head's top tokens.
        keep_tokens: keep the per-token dDE of every measured head's top tokens (detail).
        row_offset: the global number of the first row (recorded with kept tokens).
        scored: bool [batch, pos], a task's answer positions: the "all" sums are over them
            only (None: every token, running text).
    """

    def __init__(
        self,
        model: HookedTransformer,
        top: Bool[np.ndarray, "layer head batch pos"],
        keep_tokens: bool = False,
        row_offset: int = 0,
        scored: Bool[np.ndarray, "batch pos"] | None = None,
    ) -> None:
        cfg = model.cfg
        self.model = model
        self.top = top
        self.scored = scored
        self.keep_tokens = keep_tokens
        self.row_offset = row_offset
        shape = (cfg.n_layers, cfg.n_heads)
        n_c = n_components(cfg.n_layers, cfg.n_heads)
        self.sums = {k: np.zeros((*shape, n_c)) for k in ("all", "top")}
        self.totals = {(k, v): np.zeros(shape) for k in ("all", "top") for v in REPAIR_TOTALS}
        self.counts = {k: np.zeros(shape, np.int64) for k in ("all", "top")}
        self.detail: list[dict[str, np.ndarray]] = []

    def add(self, layer: int, group: list[int], res: dict[str, Tensor], rows: slice) -> None:
        """Add one stacked pass's results (ablated_pass with attribution) on rows `rows`."""
        comp = res["components"]
        mask = torch.from_numpy(self.top[layer, group, rows]).to(comp.device)  # [g, b, p]
        # One pass's sums in float32 (a pass holds a batch of rows), added up in float64.
        weights = mask.flatten(1).to(comp.dtype).unsqueeze(1)  # [g, 1, tokens]
        flat = comp.flatten(1, 2)  # [g, tokens, component]
        sums = {"all": flat.sum(1), "top": torch.bmm(weights, flat).squeeze(1)}
        counts = {"all": mask[0].numel(), "top": mask.sum((1, 2)).cpu().numpy()}
        totals = torch.stack([res[name] for name in REPAIR_TOTALS], -1).flatten(1, 2)
        totals = {"all": totals.sum(1), "top": torch.bmm(weights, totals).squeeze(1)}
        if self.scored is not None:  # a task: "all" is every answer position, not the padding
            scored = torch.from_numpy(self.scored[rows]).to(comp.device).flatten()
            counts["all"] = int(scored.sum())
            sums["all"] = torch.einsum("t,gtc->gc", scored.to(comp.dtype), flat)
            totals["all"] = torch.einsum("t,gtc->gc", scored.to(comp.dtype), flat_totals(res))
        for key in ("all", "top"):
            self.sums[key][layer, group] += sums[key].double().cpu().numpy()
            self.counts[key][layer, group] += counts[key]
            by_name = totals[key].double().cpu().numpy()  # [g, REPAIR_TOTALS]
            for i, name in enumerate(REPAIR_TOTALS):
                self.totals[key, name][layer, group] += by_name[:, i]
        if self.keep_tokens:
            for i, head in enumerate(group):
                self.detail.append(
                    _top_tokens(res, i, mask[i], layer, head, rows.start + self.row_offset)
                )

    def dataset(self) -> xr.Dataset:
        """The sums as a Dataset (dims layer, head, component)."""
        cfg = self.model.cfg
        dims = ("layer", "head", "component")
        data = {f"sum_{k}_dde": (dims, v) for k, v in self.sums.items()}
        data |= {f"n_{k}": (dims[:2], v) for k, v in self.counts.items()}
        data |= {f"sum_{k}_{name}": (dims[:2], v) for (k, name), v in self.totals.items()}
        down = downstream(
            cfg.n_layers, cfg.n_heads, bool(cfg.parallel_attn_mlp), bool(cfg.attn_only)
        )
        data["downstream"] = (("layer", "component"), np.array(down))
        coords = {"layer": np.arange(cfg.n_layers), "head": np.arange(cfg.n_heads)}
        return xr.Dataset(data, coords=coords | component_coords(self.model))

    def detail_dataset(self) -> xr.Dataset:
        """The kept top tokens (dims token, component): dde and the REPAIR_TOTALS per token,
        with each token's ablated layer and head, row and position."""
        parts = self.detail or [_top_tokens_empty(self.model)]
        cat = {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
        data = {"dde": (("token", "component"), cat.pop("dde"))}
        data |= {k: ("token", v) for k, v in cat.items()}
        return xr.Dataset(data, coords=component_coords(self.model))


def flat_totals(res: dict[str, Tensor]) -> Float[Tensor, "group tokens total"]:
    """REPAIR_TOTALS of one stacked pass, tokens flattened."""
    return torch.stack([res[name] for name in REPAIR_TOTALS], -1).flatten(1, 2)


def _top_tokens(
    res: dict[str, Tensor], i: int, mask: Tensor, layer: int, head: int, row0: int
) -> dict[str, np.ndarray]:
    where = mask.nonzero()  # [n, 2]: batch, pos
    b, p = where[:, 0], where[:, 1]
    n = len(b)
    out = {"dde": res["components"][i, b, p].cpu().numpy()}
    out |= {name: res[name][i, b, p].cpu().numpy() for name in REPAIR_TOTALS}
    out["ablated_layer"] = np.full(n, layer, np.int64)
    out["ablated_head"] = np.full(n, head, np.int64)
    out["row"] = b.cpu().numpy().astype(np.int64) + row0
    out["pos_index"] = p.cpu().numpy().astype(np.int64)
    return out


def _top_tokens_empty(model: HookedTransformer) -> dict[str, np.ndarray]:
    n_c = n_components(model.cfg.n_layers, model.cfg.n_heads)
    out = {"dde": np.zeros((0, n_c), np.float32)}
    out |= {name: np.zeros(0, np.float32) for name in REPAIR_TOTALS}
    out |= {k: np.zeros(0, np.int64) for k in ("ablated_layer", "ablated_head", "row", "pos_index")}
    return out
