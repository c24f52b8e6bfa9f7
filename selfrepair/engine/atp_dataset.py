"""engine.atp's per-batch results (`ChunkResult`) and their assembly into one xr.Dataset per
ablation kind (`atp_dataset`)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import xarray as xr
from torch import Tensor

from selfrepair.ablations import ROWS, ablation_kind

if TYPE_CHECKING:
    from transformer_lens import HookedTransformer

__all__ = ["ChunkResult", "atp_dataset"]


@dataclass
class ChunkResult:
    metric: Tensor  # [batch]: the clean row metric
    weight: Tensor  # [batch]: its summed weights
    atp_row: Tensor  # [layer, head, batch]
    graddrop_row: Tensor | None = None  # [drop_layer, layer, head, batch]
    atp_top: Tensor | None = None  # [layer, head, batch]
    graddrop_top: Tensor | None = None  # [drop_layer, layer, head, batch]
    n_top: Tensor | None = None  # [layer, head, batch]
    atp_token: Tensor | None = None  # [layer, head, batch, pos], NaN where not selected
    graddrop_token: Tensor | None = None  # [drop_layer, layer, head, batch, pos]


def atp_dataset(
    model: HookedTransformer,
    parts: list[tuple[Tensor, ChunkResult]],
    per_token: np.ndarray | None,
    ablation: str,
    source: Tensor | None,
    n_rows: int,
    n_pos: int,
) -> xr.Dataset:
    """measure_atp's chunks as one Dataset."""
    cfg = model.cfg
    first = parts[0][1]

    def cat(name: str, axis: int) -> np.ndarray:
        return np.concatenate([getattr(r, name).cpu().numpy() for _, r in parts], axis=axis)

    head_dims = ("layer", "head", "batch")
    data = {
        "atp_row": (head_dims, cat("atp_row", -1)),
        "metric_clean": ("batch", cat("metric", 0)),
        "n_scored": ("batch", cat("weight", 0)),
    }
    for name, dims in (("graddrop_row", ("drop_layer", *head_dims)), ("atp_top", head_dims)):
        if getattr(first, name) is not None:
            data[name] = (dims, cat(name, -1))
    if first.graddrop_top is not None:
        data["graddrop_top"] = (("drop_layer", *head_dims), cat("graddrop_top", -1))
    if first.n_top is not None:
        data["n_top"] = (head_dims, cat("n_top", -1).astype(np.int64))
    if per_token is not None:
        where = np.nonzero(per_token)  # layer, head, batch, pos: in that order
        data["atp_token"] = ("entry", cat("atp_token", 2)[where])
        for name, index in zip(("layer", "head", "batch", "pos"), where, strict=True):
            data[f"entry_{name}"] = ("entry", index.astype(np.int64))
        if first.graddrop_token is not None:
            data["graddrop_token"] = (("drop_layer", "entry"), cat("graddrop_token", 3)[:, *where])
    coords = {
        "layer": np.arange(cfg.n_layers),
        "head": np.arange(cfg.n_heads),
        "batch": np.arange(n_rows),
    }
    if any("drop_layer" in dims for dims, _ in data.values()):
        coords["drop_layer"] = np.arange(cfg.n_layers)
    if ablation_kind(ablation).partner_pool == ROWS:
        coords["resample_source"] = ("batch", source.numpy())
    attrs = {
        "ablation": ablation,
        "model": cfg.model_name,
        "n_pos": n_pos,
        "units": "row: a row's summed metric; top: over the head's own tokens in the row; "
        "token: one token",
    }
    return xr.Dataset(data, coords=coords, attrs=attrs)
