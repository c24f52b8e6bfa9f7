"""Figure builders for the workflow's mechanism figure rules: each opens the stores a figure
needs, checks they hold the configured model and heads, narrows them to what is drawn and calls
one plotting function of mechanisms.py. `target` is a FigureTarget's as_params() dict."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import xarray as xr
from matplotlib.figure import Figure

from selfrepair.plots.captions import head_label
from selfrepair.plots.mechanisms import (
    cumulative_neuron_share,
    ln_scale_ratio_hist,
    neuron_threshold_curves,
    resid_norm_ratio_hists,
    self_repression_scatter,
    top_neuron_scatter,
)
from selfrepair.stages.store import open_zarr


def _open(path: str, model: str) -> xr.Dataset:
    ds = open_zarr(path)
    if ds.attrs.get("model", model) != model:
        raise ValueError(f"{path} holds model {ds.attrs['model']!r}, not {model!r}")
    return ds


def _head(ds: xr.Dataset, path: str, layer: int, head: int) -> xr.Dataset:
    """One head of a mechanism store (dimension `head`, labels like L10H11)."""
    label = head_label(layer, head)
    if label not in [str(h) for h in ds["head"].values]:
        raise ValueError(
            f"{path} has no head {label} (it has {', '.join(map(str, ds['head'].values))}): "
            "rerun the workflow so the stores match the config"
        )
    return ds.sel(head=label)


def _title(target: Mapping[str, Any], heads: Sequence[Sequence[int]] | None = None) -> str:
    heads = target["heads"] if heads is None else heads
    names = ", ".join(head_label(*h) for h in heads)
    return f"{target['model']} {names}"


def fig04(paths: Mapping[str, str], target: Mapping[str, Any]) -> Figure:
    """LN scale ratio on the head's top tokens, per ablation (paths: norms store by ablation)."""
    (layer, head) = target["heads"][0]
    ratios = {}
    for ablation, path in paths.items():
        one = _head(_open(path, target["model"]), path, layer, head).load()
        ratios[ablation] = one.ln_scale_ratio.where(one.top).stack(t=("batch", "pos")).dropna("t")
    return ln_scale_ratio_hist(ratios, _title(target))


def fig16_18(paths: Mapping[str, str], target: Mapping[str, Any]) -> Figure:
    """Residual norm ratio on all tokens, per ablation and head."""
    norms = {}
    for ablation, path in paths.items():
        ds = _open(path, target["model"])
        for layer, head in target["heads"]:
            _head(ds, path, layer, head)
        labels = [head_label(*h) for h in target["heads"]]
        norms[ablation] = ds.resid_norm_ratio.sel(head=labels).load()
    return resid_norm_ratio_hists(norms, target["model"])


def _reductions(path: str, target: Mapping[str, Any], selection: str) -> xr.Dataset:
    (layer, head) = target["heads"][0]
    return _head(_open(path, target["model"]), path, layer, head).sel(selection=selection).load()


def fig07(path: str, target: Mapping[str, Any]) -> Figure:
    """The top repairing neuron on the MLP layer's top self-repair tokens."""
    return top_neuron_scatter(_reductions(path, target, "mlp_repair"), _title(target))


def fig08(paths: Sequence[str], targets: Sequence[Mapping[str, Any]], ranks: int) -> Figure:
    """One panel per target: the k-th best neuron's repair, on the head's top tokens."""
    panels = {
        _title(t): _reductions(p, t, "head_de").repair_fraction
        for p, t in zip(paths, targets, strict=True)
    }
    if len(panels) != len(targets):
        raise ValueError("figure 8 lists the same model and head twice")
    return neuron_threshold_curves(panels, ranks)


def fig15(path: str, target: Mapping[str, Any]) -> Figure:
    """Cumulative share of neuron self-repair by rank, on the head's top tokens."""
    return cumulative_neuron_share(_reductions(path, target, "head_de"), _title(target))


def fig09_19(path: str, target: Mapping[str, Any], scales: Sequence[float] | None) -> Figure:
    """Clean vs new DE of the head, at the given scales (None: every measured scale)."""
    (layer, head) = target["heads"][0]
    one = _head(_open(path, target["model"]), path, layer, head).load()
    if scales is not None:
        missing = sorted(set(map(float, scales)) - set(map(float, one["scale"].values)))
        if missing:
            raise ValueError(f"{path} has no scale {missing}: rerun the reinforcement stage")
    return self_repression_scatter(one, _title(target), scales)
