"""One function per figure rule, named after the rule (the list: selfrepair.config.figures): it
opens the stores the figure needs, checks they hold the configured model, tokens and heads,
narrows them to what is drawn, calls one drawing function of selfrepair.plots and saves the
figure to `out` (the rule's PDF and PNG; nothing is saved when `out` is empty). Each returns the
Figure, so tests can inspect it.

Arguments mirror the rule's input and params names; those several functions take:
    target: the figure's model and heads (a FigureTarget's as_params() dict).
    picks: the rule's pick records; a target whose heads are picked at run time takes them.
    n_tokens: the tokens measured per model, checked against the stores.
    out: the files to write (the PDF, then the PNG).
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import xarray as xr
from matplotlib.figure import Figure

from selfrepair.analysis.reduce import (
    EFFECT_VARIABLES,
    frozen_ln_layers,
    head_effect_drops,
    head_tokens,
)
from selfrepair.config import check_target_heads
from selfrepair.config.figures import FIGURES
from selfrepair.plots.common import saved, titled
from selfrepair.plots.effects import (
    heads_de_vs_logit_drop,
    tokens_by_ablation,
    tokens_de_vs_logit_drop,
)
from selfrepair.plots.layernorm import frozen_ln_self_repair
from selfrepair.plots.mechanisms import (
    cumulative_neuron_share,
    ln_scale_ratio_hist,
    neuron_threshold_curves,
    resid_norm_ratio_hists,
    self_repression_scatter,
    top_neuron_scatter,
)
from selfrepair.plots.per_head import (
    ln_share_clipped_and_unclipped,
    ln_share_per_head,
    self_repair_per_head,
)
from selfrepair.plots.style import with_unit
from selfrepair.stages.store import open_by_model, open_head_shards, open_zarr
from selfrepair.stages.summaries import resolve_params, task_title
from selfrepair.variables import head_label

# The stage functions are the figure rules, one each (not the who-repairs-whom ones,
# stages/repair_figures.py's, nor stages/training.py's).
__all__ = [f.rule for f in FIGURES if f.kind not in ("repair", "atp", "training")]

Paths = Sequence[str | os.PathLike]
Target = Mapping[str, Any]
ON_ANSWERS = "mean self-repair on the answers"  # a task's selection: every answer
SQUARE_WIDTH = 5.2  # inches: one square panel (equal axes) and its colour bar, and a title


# --- opening and checking stores ---------------------------------------------------------------


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


def _title(target: Target, heads: Sequence[Sequence[int]] | None = None) -> str:
    heads = target["heads"] if heads is None else heads
    names = ", ".join(head_label(*h) for h in heads)
    return f"{target['model']} {names}"


def _per_head(
    summaries: Paths, intervals: Paths, models: Sequence[str], n_tokens: int
) -> tuple[dict[str, xr.Dataset], dict[str, xr.Dataset]]:
    """Each model's per-head summary and bootstrap intervals, checked (open_by_model)."""
    return open_by_model(summaries, models, n_tokens), open_by_model(intervals, models, n_tokens)


# --- the paper's per-head figures (stores of the ablation and summaries stages) ----------------


def fig01(
    summaries: Paths,
    intervals: Paths,
    models: Sequence[str],
    n_tokens: int | None,
    top_fraction: float,
    out: Paths = (),
    task: Mapping[str, str] | None = None,
) -> Figure:
    """Fig 1: per-head mean self-repair on top tokens by relative depth, one panel per model;
    on a task (rule task_self_repair_per_head) on its answers, titled with its clean metric.

    Args:
        summaries: each model's per-head summary under the figures' ablation, in models' order.
        intervals: each model's bootstrap intervals, in models' order.
        models: the models drawn.
        top_fraction: the share of each head's tokens the top selection keeps.
        task: a task's name, ablation and metric JSON (summaries.task_title), or None.
    """
    summary, interval = _per_head(summaries, intervals, models, n_tokens)
    fig = self_repair_per_head(
        summary,
        {m: ds.top_self_repair for m, ds in interval.items()},
        top_fraction=top_fraction,
        label=None if task is None else ON_ANSWERS,
    )
    return saved(fig if task is None else titled(fig, task_title(task, models[0])), out)


def fig02(
    summaries: Paths,
    models: Sequence[str],
    shown: Sequence[str],
    n_tokens: int | None,
    idealised_from: str | None = None,
    out: Paths = (),
    task: Mapping[str, str] | None = None,
) -> Figure:
    """Fig 2: per-head mean direct-effect drop against mean logit drop; on a task (rule
    task_de_vs_metric_drop) the means over its answers (its top tokens) against the drop of
    its metric, titled with the clean metric.

    Args:
        summaries: the per-head summaries of models, in their order.
        models: the models whose summaries are read.
        shown: the models drawn, one panel each.
        idealised_from: a model whose heads are also drawn moved onto y = x and y = 0
            (Figs 21-24), or None.
        task: a task's name, ablation and metric JSON (summaries.task_title), or None.
    """
    summary = open_by_model(summaries, models, n_tokens)
    means = "mean" if task is None else "top"
    drops = {m: head_effect_drops(summary[m], means) for m in dict.fromkeys(shown)}
    if idealised_from is not None:
        drops.setdefault(idealised_from, head_effect_drops(summary[idealised_from]))
    ylabel = None if task is None else with_unit("mean drop of the metric")
    fig = heads_de_vs_logit_drop(drops, shown=shown, idealised_from=idealised_from, ylabel=ylabel)
    if task is not None:  # less wide than a task's other figures: a square panel
        fig = titled(fig, task_title(task, models[0]), min_width=SQUARE_WIDTH)
    return saved(fig, out)


def _variant(base: Callable[..., Figure], rule: str, doc: str) -> Callable[..., Figure]:
    """The stage function of a rule made `use rule <base> as <rule> with:` other params: the
    base's drawing under the rule's name (the shared script calls it by the rule's name)."""

    @functools.wraps(base)
    def variant(*args: Any, **kwargs: Any) -> Figure:
        return base(*args, **kwargs)

    variant.__name__ = variant.__qualname__ = rule
    variant.__doc__ = doc
    return variant


fig21_24 = _variant(
    fig02,
    "fig21_24",
    """Figs 21-24: Fig 2 for the other models, beside Fig 2's model moved onto the ideal lines
    (idealised_from). Args as fig02.""",
)


def fig03(
    shards: Paths, target: Target, n_tokens: int, picks: Paths = (), out: Paths = ()
) -> Figure:
    """Fig 3: per-token direct-effect drop against logit drop for a few heads of one model;
    shards: the model's ablation shards under the figures' ablation."""
    target = resolve_params(dict(target), picks)
    heads = [tuple(h) for h in target["heads"]]
    ds = open_head_shards(shards, target["model"], n_tokens, EFFECT_VARIABLES, heads)
    check_target_heads(target, ds.sizes["layer"], ds.sizes["head"])
    tokens = head_tokens(ds, heads)
    return saved(tokens_de_vs_logit_drop(tokens, target["model"]), out)


def fig05(
    shards: Mapping[str, Paths],
    target: Target,
    n_tokens: int,
    picks: Paths = (),
    out: Paths = (),
) -> Figure:
    """Fig 5: one head's per-token direct-effect drop against logit drop under each ablation;
    shards: the model's ablation shards by ablation, in the order drawn."""
    target = resolve_params(dict(target), picks)
    (head,) = [tuple(h) for h in target["heads"]]
    opened = {
        a: open_head_shards(paths, target["model"], n_tokens, EFFECT_VARIABLES, [head])
        for a, paths in shards.items()
    }
    for ds in opened.values():
        check_target_heads(target, ds.sizes["layer"], ds.sizes["head"])
    tokens = {a: head_tokens(ds, [head]).isel(head_name=0) for a, ds in opened.items()}
    title = f"{target['model']} {head_label(*head)}"
    return saved(tokens_by_ablation(tokens, title), out)


def fig06(
    summaries: Paths,
    intervals: Paths,
    models: Sequence[str],
    n_tokens: int,
    top_fraction: float,
    out: Paths = (),
) -> Figure:
    """Fig 6: the LayerNorm share of each head's direct effect (clipped per token). Args as
    fig01."""
    summary, interval = _per_head(summaries, intervals, models, n_tokens)
    clipped = {m: ds.top_ln_share_clipped for m, ds in interval.items()}
    return saved(ln_share_per_head(summary, clipped, top_fraction), out)


def fig11(
    summaries: Paths,
    intervals: Paths,
    models: Sequence[str],
    n_tokens: int,
    top_fraction: float,
    out: Paths = (),
) -> Figure:
    """Fig 11: Fig 6's clipped share beside the unclipped one (rule fig11 is fig06 `with:`
    unclipped). Args as fig01."""
    summary, interval = _per_head(summaries, intervals, models, n_tokens)
    return saved(ln_share_clipped_and_unclipped(summary, interval, top_fraction), out)


def extra_frozen_ln(
    normal: Paths,
    frozen: Paths,
    models: Sequence[str],
    n_tokens: int,
    top_fraction: float,
    out: Paths = (),
) -> Figure:
    """Beyond the paper: per-layer self-repair as measured, with the final LayerNorm frozen, and
    with every LayerNorm frozen at its clean scale.

    Args:
        normal: each model's summary under the frozen variant's base ablation.
        frozen: each model's summary under the frozen-LayerNorm variant.
        models: the models drawn, in the order of both path lists.
        top_fraction: the share of each head's tokens the top selection keeps.
    """
    normals = open_by_model(normal, models, n_tokens)
    frozens = open_by_model(frozen, models, n_tokens)
    layers = {m: frozen_ln_layers(normals[m], frozens[m]) for m in models}
    return saved(frozen_ln_self_repair(layers, top_fraction), out)


# --- the mechanism figures (stores of the mechanism stages) ------------------------------------


def fig04(norms: Mapping[str, str], target: Target, picks: Paths = (), out: Paths = ()) -> Figure:
    """Fig 4: LN scale ratio on the head's top tokens, per ablation; norms: the model's norms
    store by ablation."""
    target = resolve_params(dict(target), picks)
    (layer, head) = target["heads"][0]
    ratios = {}
    for ablation, path in norms.items():
        one = _head(_open(path, target["model"]), path, layer, head).load()
        ratios[ablation] = one.ln_scale_ratio.where(one.top).stack(t=("batch", "pos")).dropna("t")
    return saved(ln_scale_ratio_hist(ratios, _title(target)), out)


def fig16_18(
    norms: Mapping[str, str], target: Target, picks: Paths = (), out: Paths = ()
) -> Figure:
    """Figs 16-18: residual norm ratio on all tokens, per ablation and head. Args as fig04."""
    target = resolve_params(dict(target), picks)
    ratios = {}
    for ablation, path in norms.items():
        ds = _open(path, target["model"])
        for layer, head in target["heads"]:
            _head(ds, path, layer, head)
        labels = [head_label(*h) for h in target["heads"]]
        ratios[ablation] = ds.resid_norm_ratio.sel(head=labels).load()
    return saved(resid_norm_ratio_hists(ratios, target["model"]), out)


def _reductions(path: str, target: Target, selection: str) -> xr.Dataset:
    (layer, head) = target["heads"][0]
    return _head(_open(path, target["model"]), path, layer, head).sel(selection=selection).load()


def fig07(reductions: str, target: Target, picks: Paths = (), out: Paths = ()) -> Figure:
    """Fig 7: the top repairing neuron on the MLP layer's top self-repair tokens; reductions:
    the model's neuron reductions store."""
    target = resolve_params(dict(target), picks)
    fig = top_neuron_scatter(_reductions(reductions, target, "mlp_repair"), _title(target))
    return saved(fig, out)


def fig08(
    reductions: Sequence[str],
    targets: Sequence[Target],
    ranks: int,
    picks: Paths = (),
    out: Paths = (),
) -> Figure:
    """Fig 8: one panel per target, the k-th best neuron's repair on the head's top tokens.

    Args:
        reductions: each target's model's neuron reductions store, in the order of targets.
        targets: the figure's entries (model and one head each).
        ranks: how many neuron ranks to draw.
    """
    targets = [resolve_params(dict(t), picks) for t in targets]
    panels = {
        _title(t): _reductions(p, t, "head_de").repair_fraction
        for p, t in zip(reductions, targets, strict=True)
    }
    if len(panels) != len(targets):
        raise ValueError("figure 8 lists the same model and head twice")
    return saved(neuron_threshold_curves(panels, ranks), out)


def fig15(reductions: str, target: Target, picks: Paths = (), out: Paths = ()) -> Figure:
    """Fig 15: cumulative share of neuron self-repair by rank, on the head's top tokens. Args
    as fig07."""
    target = resolve_params(dict(target), picks)
    fig = cumulative_neuron_share(_reductions(reductions, target, "head_de"), _title(target))
    return saved(fig, out)


def fig09(
    reinforcement: str,
    target: Target,
    scales: Sequence[float] | None,
    picks: Paths = (),
    out: Paths = (),
) -> Figure:
    """Fig 9: the head's clean vs new DE after adding its own output back to its input.

    Args:
        reinforcement: the model's reinforcement store.
        scales: the scales drawn (Fig 9: the first; None: every measured scale).
    """
    target = resolve_params(dict(target), picks)
    (layer, head) = target["heads"][0]
    one = _head(_open(reinforcement, target["model"]), reinforcement, layer, head).load()
    if scales is not None:
        missing = sorted(set(map(float, scales)) - set(map(float, one["scale"].values)))
        if missing:
            raise ValueError(
                f"{reinforcement} has no scale {missing}: rerun the reinforcement stage"
            )
    return saved(self_repression_scatter(one, _title(target), scales), out)


fig19 = _variant(
    fig09,
    "fig19",
    """Fig 19: Fig 9 at every measured scale (scales: all of them). Args as fig09.""",
)
