"""The method comparison's rules (rules/methods.smk): task_methods (every method's per-answer
values of each candidate head for one named set of a task: engine.methods, engine.methods_grad)
and method_table (each method's ROC-AUC, average precision and precision@k against the task's
expected backups, with a bootstrap interval over prompts: analysis.methods; and its figure) and
method_seeds (those tables of a task's prompt seeds, mean +- std: analysis.method_seeds)."""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import xarray as xr

from selfrepair.stages.store import open_zarr, write_text, write_zarr
from selfrepair.stages.tasks import measured
from selfrepair.variables import head_label

if TYPE_CHECKING:
    from selfrepair.stages.job import ModelJob

__all__ = ["method_seeds", "method_table", "methods_per_token", "task_methods"]

log = logging.getLogger("selfrepair")


def task_methods(
    job: ModelJob,
    *,
    task: str,
    metric: str,
    ablation: str,
    members: Sequence[Sequence[int]] | dict[str, int],
    steps: int,
    mean_include_bos: bool,
    out: str,
    attrs: dict[str, Any],
    metric_json: str | None = None,
    clean_store: str | None = None,
) -> xr.Dataset:
    """Rule task_methods: per candidate head (every head outside the set) and answer, CoAx's
    single and conditional effects in energy and logit-difference form, the conditional
    gradient, AtP and EAP-IG.

    Args:
        job: the model job (its `tokens` is the prompts store).
        task: the task's name.
        metric: correct_logit or logit_diff.
        ablation: the task's first ablation (z' of every method).
        members: the set, [[layer, head], ...], {induction_score_top: k} or
            {direct_effect_top: k} (tasks.<task>.ablation_sets.<set>;
            stages.task_summaries.set_heads).
        steps: EAP-IG's steps (tasks.<task>.eap_ig_steps).
        mean_include_bos: as the ablate rule's.
        out: the store to write (results/<model>/tasks/<task>/methods/<set>.zarr).
        attrs: the rule's provenance attributes.
        metric_json: task_metric's metric.json, when the set is picked from its induction scores.
        clean_store: the task's clean store, when the set is picked by clean direct effect.
    """
    import torch

    from selfrepair.engine.methods import measure_methods
    from selfrepair.engine.methods_grad import measure_gradient_methods
    from selfrepair.stages.task_summaries import set_heads

    model, data = measured(job, task, metric)
    members = [
        tuple(int(x) for x in h) for h in set_heads({"": members}, metric_json, clean_store)[""]
    ]
    scored = torch.from_numpy(np.asarray(data.scored, bool))
    common = dict(batch_size=job.batch_size, mean_include_bos=mean_include_bos, task=data.inputs)
    rows = data.rows
    with job.guarded(model, {"engine.batch_size": job.batch_size}):
        t0 = time.perf_counter()
        ablated = measure_methods(model, rows, ablation, members, scored, progress=True, **common)
        log.info("single and conditional ablation: %.1fs", time.perf_counter() - t0)
        t0 = time.perf_counter()
        grads = measure_gradient_methods(
            model, rows, ablation, members, scored, steps=steps, **common
        )
        log.info("gradients and EAP-IG (%d steps): %.1fs", steps, time.perf_counter() - t0)
    ds = ablated.merge(_on_candidates(grads, ablated), compat="no_conflicts")
    ds.attrs.update(ablated.attrs | {"steps": steps})
    ds.attrs.update(job.provenance(attrs, ablation=ablation, metric=metric))
    write_zarr(ds, out)
    return ds


def _on_candidates(grads: xr.Dataset, ablated: xr.Dataset) -> xr.Dataset:
    """The gradient methods' (layer, head, token) values on ablated's candidate axis."""
    la, h = ablated.candidate_layer.values, ablated.candidate_head.values
    picked = grads.isel(
        layer=xr.DataArray(la, dims="candidate"), head=xr.DataArray(h, dims="candidate")
    )
    picked = picked.drop_vars(["layer", "head"], errors="ignore")
    return picked.assign_coords(candidate=ablated.candidate.values)


def methods_per_token(ds: xr.Dataset) -> dict[str, np.ndarray]:
    """analysis.methods.PER_TOKEN's values [candidate, token] from a task_methods store (an
    `abs_<name>` one: |<name>| per answer)."""
    from selfrepair.analysis.methods import PER_TOKEN

    return {
        name: np.abs(ds[name[4:]].values) if name.startswith("abs_") else ds[name].values
        for name in PER_TOKEN
    }


def graddrop_per_answer(atp: xr.Dataset, methods: xr.Dataset) -> np.ndarray | None:
    """AtP*'s GradDrop of each candidate per answer [candidate, token] from a task_atp store
    (graddrop_token_combined: (1 / (L - 1)) sum_l |estimate_l|, the combination of CoAx's
    `head_attribution_graddrop` in src/curvgraph/baselines.py per example), on the methods
    store's answers; None where the store has no per-answer GradDrop or a candidate is not
    measured there (models[].heads)."""
    if "graddrop_token_combined" not in atp:
        return None
    for coord in ("prompt", "position"):
        if not np.array_equal(atp[coord].values, methods[coord].values):
            raise ValueError(f"the task_atp store's answers ({coord}) are not the methods'")
    values = atp.graddrop_token_combined.values[
        methods.candidate_layer.values, methods.candidate_head.values
    ]
    return values if np.isfinite(values).all() else None


def method_table(
    *,
    methods: str,
    expected: Sequence[Sequence[int]] | Mapping[str, float],
    csv: str,
    html_path: str,
    figure: str,
    figure_pdf: str | None = None,
    bootstrap: Mapping[str, Any],
    anchors: bool = False,
    extra: Mapping[str, Mapping[str, float]] | None = None,
    title: str = "Methods",
    atp: str | None = None,
    metric: str | None = None,
) -> pd.DataFrame:
    """Rule method_table: every method's ranking of the expected backups (ROC-AUC with its
    bootstrap interval over prompts, average precision, precision@k) and the prompt count, CSV,
    HTML (the count above the table) and a figure (the count in its legend).

    Args:
        methods: the task_methods store.
        expected: the expected backups, [[layer, head], ...], or {induction_score_above: s}
            (stages.task_summaries.expected_heads, from `metric`).
        csv, html_path, figure: the files to write (the figure: PNG).
        figure_pdf: the figure as PDF too.
        bootstrap: n_resamples, level, seed.
        anchors: mark CoAx's values on the figure (the protocol matches CoAx's).
        extra: method -> candidate -> score of other stores, joined (analysis.methods).
        title: the HTML page's title.
        atp: the task_atp store under the same ablation (engine.atp): its GradDrop per answer
            joins as method atp_star_graddrop, with its interval (graddrop_per_answer).
        metric: the task_metric JSON (an induction task's induction scores).
    """
    import matplotlib as mpl

    from selfrepair.analysis.methods import method_page, prompts_note
    from selfrepair.analysis.methods import method_table as table_of
    from selfrepair.plots.common import save_figure
    from selfrepair.plots.methods import methods_figure
    from selfrepair.stages.task_summaries import expected_heads

    ds = open_zarr(methods).load()
    positives = [head_label(int(la), int(h)) for la, h in expected_heads(expected, metric)]
    per_token = methods_per_token(ds)
    if atp:
        graddrop = graddrop_per_answer(open_zarr(atp).load(), ds)
        if graddrop is None:
            log.info(
                "%s: no per-answer GradDrop of every candidate; atp_star_graddrop left out", atp
            )
        else:
            per_token["atp_star_graddrop"] = graddrop
    table = table_of(
        per_token,
        ds.prompt.values,
        list(ds.candidate.values),
        positives,
        extra=extra,
        **bootstrap,
    )
    log.info("ROC-AUC per method:\n%s", table.roc_auc)
    write_text(csv, table.to_csv(float_format="%.6g"))
    n_prompts = int(table.n_prompts.iloc[0])
    write_text(html_path, method_page(table, title=title, note=prompts_note(n_prompts)))
    fig = methods_figure(table, anchors=anchors, n_prompts=n_prompts)
    with mpl.rc_context({"savefig.bbox": "tight"}):  # as the figure was always saved
        save_figure(fig, figure, dpi=150)
        if figure_pdf:
            save_figure(fig, figure_pdf)
    return table


def method_seeds(
    *, tables: Sequence[str], seeds: Sequence[int], csv: str, html_path: str, title: str
) -> pd.DataFrame:
    """Rule method_seeds: the method tables of a task's prompt seeds as one table, per method
    the mean +- std over seeds beside each seed's values and prompt count (analysis.method_seeds),
    CSV (full precision) and HTML (each seed's prompt count above the table; each std to two
    significant figures, analysis.methods.std_text).

    Args:
        tables: each seed's method_table CSV, in the order of `seeds`.
        seeds: the task's prompt_seeds.
        csv, html_path: the files to write.
        title: the HTML page's title.
    """
    from selfrepair.analysis.method_seeds import seed_prompts, seed_summary
    from selfrepair.analysis.methods import method_page, prompts_note

    read = {int(s): pd.read_csv(t, index_col="method") for s, t in zip(seeds, tables, strict=True)}
    table = seed_summary(read)
    log.info("ROC-AUC mean and std over seeds %s:\n%s", list(read), table.iloc[:, :2])
    write_text(csv, table.to_csv(float_format="%.6g"))
    note = prompts_note(seed_prompts(read))
    write_text(html_path, method_page(table, title=title, note=note))
    return table
