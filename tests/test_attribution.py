"""Who repairs whom (engine.attribution): every component's change of direct effect against the
slow full-forward reference, the sums that must hold per token, and the reductions against a
brute-force recomputation from per-token data."""

from __future__ import annotations

import re

import numpy as np
import pytest
import torch
import xarray as xr
import yaml
from helpers import ROOT, merged, reduced_demo_config, snakemake

from selfrepair.analysis import attribution
from selfrepair.analysis.reduce import head_summary, top_token_mask
from selfrepair.config import ConfigError, FigureTarget, attribution_heads
from selfrepair.engine.attribution import RepairSums
from selfrepair.engine.self_repair import measure_heads
from selfrepair.models.builders import random_model
from selfrepair.reference.attribution import reference_component_effects
from selfrepair.stages.store import open_zarr
from selfrepair.variables import (
    ABLATIONS,
    component_kinds,
    component_names,
    downstream,
    n_components,
)

TOL = 1e-4


def all_tokens(model, n_rows: int, n_pos: int) -> np.ndarray:
    return np.ones((model.cfg.n_layers, model.cfg.n_heads, n_rows, n_pos), bool)


def per_token(model, tokens, ablation, freeze_ln=False, heads=None, **kwargs):
    """measure_heads with every token kept per head: (dataset, [layer, head, batch, pos, comp])."""
    n_rows, n_pos = tokens.shape[0], tokens.shape[1] - 1
    sums = RepairSums(model, all_tokens(model, n_rows, n_pos), keep_tokens=True)
    ds = measure_heads(
        model, tokens, ablation, heads=heads, freeze_ln=freeze_ln, sums=sums, **kwargs
    )
    det = sums.detail_dataset()
    out = np.full((*all_tokens(model, n_rows, n_pos).shape, det.sizes["component"]), np.nan)
    out[det.ablated_layer, det.ablated_head, det.row, det.pos_index] = det.dde.values
    return ds, out, sums


@pytest.mark.parametrize("freeze_ln", [False, True], ids=["ln", "frozen-ln"])
@pytest.mark.parametrize("ablation", ABLATIONS)
def test_every_component_matches_full_forward_reference(
    tiny_model, tiny_tokens, ablation, freeze_ln, one_torch_thread
):
    _, got, _ = per_token(
        tiny_model, tiny_tokens, ablation, freeze_ln, batch_size=4, heads_per_pass=3
    )
    ref = reference_component_effects(tiny_model, tiny_tokens, ablation, freeze_ln=freeze_ln)
    biggest = 0.0
    for (layer, head), values in ref.items():
        assert np.abs(got[layer, head] - values).max() < TOL, (layer, head)
        biggest = max(biggest, float(np.abs(values[..., :-1]).max()))
    assert biggest > 0.01  # the heads and MLPs do repair, or the comparison proves little


@pytest.mark.parametrize("ablation", ABLATIONS)
def test_components_add_up_per_token(tiny_model, tiny_tokens, ablation, one_torch_thread):
    ds, got, _ = per_token(tiny_model, tiny_tokens, ablation)
    cfg = tiny_model.cfg
    kinds = np.array(component_kinds(cfg.n_layers, cfg.n_heads))
    is_head, is_mlp = kinds == "head", kinds == "mlp"
    heads = got[..., is_head].sum(-1)
    mlps = got[..., is_mlp].sum(-1)
    assert np.abs(heads - ds.sr_heads.values).max() < 1e-5
    assert np.abs(mlps - ds.sr_mlps.values).max() < 1e-5
    assert np.abs(got.sum(-1) - ds.self_repair.values).max() < 1e-5
    assert np.array_equal(got[..., -1], ds.sr_ln.values)  # the LayerNorm term is sr_ln itself
    # Components that do not read the ablated head change nothing.
    down = np.array(downstream(cfg.n_layers, cfg.n_heads, cfg.parallel_attn_mlp, cfg.attn_only))
    for layer in range(cfg.n_layers):
        assert np.all(got[layer][..., ~down[layer]] == 0)


def test_head_variables_unchanged_by_attribution(tiny_model, tiny_tokens, one_torch_thread):
    plain = measure_heads(tiny_model, tiny_tokens, "resample", batch_size=4, heads_per_pass=3)
    ds, _, _ = per_token(tiny_model, tiny_tokens, "resample", batch_size=4, heads_per_pass=3)
    for name in plain.data_vars:
        np.testing.assert_array_equal(ds[name].values, plain[name].values, err_msg=name)


def test_parallel_block_same_layer_mlp_and_last_layer(one_torch_thread):
    """Pythia's MLP of the ablated layer does not repair; a last-layer head has only LN."""
    model = random_model("pythia")
    gen = torch.Generator().manual_seed(2)
    tokens = torch.randint(1, model.cfg.d_vocab, (4, 10), generator=gen)
    tokens[:, 0] = 0
    ds, got, _ = per_token(model, tokens, "zero")
    n_layers, n_heads = model.cfg.n_layers, model.cfg.n_heads
    names = component_names(n_layers, n_heads)
    for layer in range(n_layers):
        assert np.all(got[layer][..., names.index(f"MLP{layer}")] == 0)
    last = got[n_layers - 1]
    assert np.all(last[..., :-1] == 0)
    assert np.abs(last[..., -1]).max() > 0
    np.testing.assert_array_equal(last[..., -1], ds.sr_ln.values[n_layers - 1])


def test_sums_equal_brute_force_over_global_top_tokens(one_torch_thread):
    """Two shards summed and reduced (the workflow's path) equal the means over the global top
    2% taken from per-token data of the whole run, the same tokens summarize_heads takes."""
    model = random_model("gpt2")
    gen = torch.Generator().manual_seed(5)
    tokens = torch.randint(1, model.cfg.d_vocab, (12, 17), generator=gen)
    tokens[:, 0] = 0
    n_pos, fraction = 16, 0.05
    # Brute force: every token of each shard kept, the top set taken over the whole run.
    shards = [(0, 6), (6, 12)]
    runs = [per_token(model, tokens[a:b], "resample") for a, b in shards]
    de = xr.concat([ds.de_clean for ds, _, _ in runs], "batch")
    full = np.concatenate([got for _, got, _ in runs], axis=2)
    mask = top_token_mask(de, fraction).values.reshape(full.shape[:4])
    # The workflow: top tokens chosen once, each shard summed over its part of them.
    indices = attribution.top_token_indices(de, fraction).values
    parts = []
    for a, b in shards:
        top = attribution.shard_top_mask(indices, a, b - a, n_pos)
        np.testing.assert_array_equal(top, mask[:, :, a:b])
        sums = RepairSums(model, top)
        measure_heads(model, tokens[a:b], "resample", sums=sums)
        parts.append(sums.dataset())
    summary = attribution.repair_summary(attribution.combine_sums(parts))
    down = summary.downstream.values[:, None, :]
    brute_top = np.nansum(full * mask[..., None], (2, 3)) / mask.sum((2, 3))[..., None]
    brute_all = full.mean((2, 3))
    np.testing.assert_allclose(summary.top_dde.values, np.where(down, brute_top, np.nan), atol=1e-6)
    np.testing.assert_allclose(summary.all_dde.values, np.where(down, brute_all, np.nan), atol=1e-6)
    # ... and its head totals are the per-head summary's, over the same tokens.
    merged = xr.concat([ds for ds, _, _ in runs], "batch")
    reference = head_summary(merged, top_fraction=fraction)
    for name in ("self_repair", "sr_heads", "sr_mlps", "sr_ln"):
        np.testing.assert_allclose(
            summary[f"top_{name}"].values, reference[f"top_{name}"].values, atol=1e-6
        )
        np.testing.assert_allclose(
            summary[f"all_{name}"].values, reference[f"mean_{name}"].values, atol=1e-6
        )
    errors = attribution.sum_errors(summary)
    assert max(errors.values()) < 1e-5, errors
    assert summary.sizes["component"] == n_components(model.cfg.n_layers, model.cfg.n_heads)
    # The shards' counts are checked against the top-token store: one shard summed twice (a
    # store copied over the other) has every token's count but not every head's top tokens.
    top_store = xr.Dataset(
        {"token": (("layer", "head", "rank"), indices)}, attrs={"n_tokens": 12 * n_pos}
    )
    counts = attribution.top_counts(top_store)
    assert attribution.count_problem(attribution.combine_sums(parts), *counts) is None
    twice = attribution.combine_sums([parts[1], parts[1]])
    assert int(twice.n_all.max()) == 12 * n_pos
    assert attribution.count_problem(twice, *counts) == (
        f"the stores summed {int(twice.n_top.values[twice.n_top.values != indices.shape[2]][0])}"
        f" tokens where n_top must be {indices.shape[2]} for every measured head "
        f"(head_top_tokens: {indices.shape[2]} top tokens of {12 * n_pos})"
    )
    assert "n_all must be" in attribution.count_problem(
        attribution.combine_sums(parts[:1]), *counts
    )


def test_shares_add_up_to_one():
    model = random_model("llama")
    gen = torch.Generator().manual_seed(4)
    tokens = torch.randint(1, model.cfg.d_vocab, (4, 12), generator=gen)
    tokens[:, 0] = 0
    _, _, sums = per_token(model, tokens, "mean")
    summary = attribution.repair_summary(sums.dataset())
    total = summary.top_share.sum("component")
    assert np.abs(total.values - 1).max() < 1e-3


def test_rankings_and_table():
    names = component_names(2, 2)
    dde = np.full((2, 2, len(names)), np.nan)
    dde[0, 0, 2:] = [0.5, -0.1, 0.2, 0.05, 0.15]  # L1H0, L1H1, MLP0, MLP1, LN
    dde[0, 1, 2:] = [0.0, 0.0, 0.0, 0.0, 0.01]
    summary = xr.Dataset(
        {
            "top_dde": (("layer", "head", "component"), dde),
            "all_dde": (("layer", "head", "component"), dde / 2),
            "top_share": (("layer", "head", "component"), dde / 0.8),
            "top_self_repair": (("layer", "head"), np.array([[0.8, 0.01], [np.nan, np.nan]])),
        },
        coords={
            "layer": [0, 1],
            "head": [0, 1],
            "component": names,
            "component_kind": ("component", component_kinds(2, 2)),
        },
    )
    assert attribution.most_repaired(summary, 5) == [(0, 0), (0, 1)]
    assert attribution.top_repairers(summary, (0, 0), 3) == ["L1H0", "MLP0", "LN"]
    assert attribution.top_repairers(summary, (0, 0), 2, kinds=("mlp",)) == ["MLP0", "MLP1"]
    assert attribution.repair_pair(summary) == ((0, 0), "L1H0")
    last_only = summary.copy(deep=True)
    last_only["top_dde"][:] = np.nan
    last_only["top_dde"].loc[{"component": "LN"}] = 0.1
    assert attribution.repair_pair(last_only) == ((0, 0), "LN")
    table = attribution.repair_graph(summary, 2)
    assert list(table.ablated_head) == ["L0H0", "L0H0", "L0H1", "L0H1"]
    assert table.top_dde.iloc[0] == 0.5 and np.isnan(table.ci_low.iloc[0])


# --- the reduced demo's stores (tests/conftest.py finished_run) -----------------------------


@pytest.mark.slow
def test_demo_repair_summaries_add_up_and_match_the_head_summaries(finished_run):
    """In every model and variant the stored components add up to sr_heads + sr_mlps and to
    self_repair; the top tokens are summarize_heads' own (same count, same means of the head
    variables) where the ablated pass's clean DE is the clean cache's."""
    run, _ = finished_run
    results = run / "results"
    for model in ("tiny-gpt2", "tiny-pythia"):
        top = open_zarr(results / model / "attribution" / "top_tokens.zarr")
        for variant in ("resample", "mean", "zero", "resample-frozen-ln"):
            repair = open_zarr(results / model / "attribution" / f"{variant}.zarr")
            heads = open_zarr(results / model / "summary" / f"{variant}.zarr")
            errors = attribution.sum_errors(repair)
            assert max(errors.values()) < 1e-5, (model, variant, errors)
            assert np.all(repair.n_top.values == top.sizes["rank"])
            assert np.all(repair.n_top.values == heads.top_n_tokens.values)
            if variant.endswith("frozen-ln"):  # its clean pass differs in the last bits
                assert np.abs(repair.top_dde.sel(component="LN")).max() < 1e-6
                continue
            for name in ("self_repair", "sr_heads", "sr_mlps", "sr_ln", "de_clean"):
                np.testing.assert_allclose(
                    repair[f"top_{name}"], heads[f"top_{name}"], atol=1e-5, err_msg=name
                )
                np.testing.assert_allclose(
                    repair[f"all_{name}"], heads[f"mean_{name}"], atol=1e-5, err_msg=name
                )


@pytest.mark.slow
def test_demo_repair_detail_is_the_summary_per_token(finished_run):
    """The detail store's tokens of a head are its top tokens, and their means are the
    summary's; per token the components add up to the head's self-repair."""
    run, _ = finished_run
    results = run / "results"
    for model in ("tiny-gpt2", "tiny-pythia"):
        base = results / model / "attribution"
        detail = open_zarr(base / "detail-resample.zarr").load()
        summary = open_zarr(base / "resample.zarr")
        top = open_zarr(base / "top_tokens.zarr")
        heads = [tuple(h) for h in detail.attrs["heads"]]
        assert set(attribution.most_repaired(summary, 3)) <= set(heads)
        n_pos = top.attrs["n_pos"]
        for head in heads:
            one = attribution.head_detail(detail, head)
            tokens = np.sort(one.row.values * n_pos + one.pos_index.values)
            np.testing.assert_array_equal(tokens, np.sort(top.token.values[head]))
            means = one.dde.mean("token").values
            stored = summary.top_dde.sel(layer=head[0], head=head[1]).values
            np.testing.assert_allclose(np.where(np.isnan(stored), np.nan, means), stored, atol=1e-5)
            per_token = one.dde.sum("component") - one.self_repair
            assert float(np.abs(per_token).max()) < 1e-5


# --- config ----------------------------------------------------------------------------------


def test_detail_heads_are_the_figure_heads_and_named_ones_checked():
    models = {"tiny": {"name": "tiny", "train": {"arch": "gpt2", "n_layers": 4, "n_heads": 4}}}
    target = FigureTarget("fig05", "tiny", ((3, 1),), "pythia-160m", ((11, 10),), "not run")
    config = {"figures": {"attribution": {"heads": {"tiny": [[0, 2]]}}}}
    assert attribution_heads(config, models, [target]) == {"tiny": [(0, 2), (3, 1)]}
    config["figures"]["attribution"]["heads"] = {"other": [[0, 0]]}
    with pytest.raises(ConfigError, match=r"figures\.attribution\.heads\.other: 'other' is not"):
        attribution_heads(config, models, [])
    config["figures"]["attribution"]["heads"] = {"tiny": [[4, 0]]}
    with pytest.raises(ConfigError, match=r"heads\.tiny: tiny has no L4H0 \(4 layers x 4 heads\)"):
        attribution_heads(config, models, [])


def _dry_run_jobs(tmp_path, extra: dict) -> str:
    config = merged(reduced_demo_config(), extra)
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    proc = snakemake(
        "-n", "--cores", "1", "--configfile", str(path), "--quiet", "rules", cwd=ROOT, timeout=600
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout + proc.stderr


def test_attribution_is_on_by_default_and_off_with_its_key(tmp_path):
    on = _dry_run_jobs(tmp_path, {})
    for rule in ("head_top_tokens", "repair_summary", "repair_detail", "repair_graph"):
        assert re.search(rf"^{rule}\s+\d+", on, re.M), rule
    off = _dry_run_jobs(tmp_path, {"engine": {"attribution": False}})
    assert not re.search(r"^repair_\w+\s+\d+", off, re.M)
    # each head's top tokens are also attribution patching's units (engine.atp, on by default)
    assert re.search(r"^head_top_tokens\s+\d+", off, re.M)
    both_off = _dry_run_jobs(tmp_path, {"engine": {"attribution": False, "atp": False}})
    assert not re.search(r"^repair_\w+\s+\d+", both_off, re.M)
    # ... and the summaries' (and largest_top_de picks') selection of them
    assert re.search(r"^head_top_tokens\s+\d+", both_off, re.M)
    ablate = re.compile(r"^ablate\s+(\d+)", re.M)
    assert ablate.search(off)[1] == ablate.search(on)[1]  # the same ablate jobs, one output less


@pytest.mark.slow
def test_demo_task_repairs_are_refused_as_running_texts_are(finished_run, tmp_path):
    """Issue 35: a task's repair summary checks its sums with running text's count_problem
    (every answer a top token, summed once), not a copy of it: a store whose head summed one
    answer twice is refused with the store named, the intact one summarised."""
    from selfrepair.stages.store import DamagedStore, write_zarr
    from selfrepair.stages.summaries import _task_repairs

    run, _ = finished_run
    task = run / "results" / "tiny-gpt2" / "tasks" / "induction"
    sums_path = task / "attribution" / "sums-corrupted.zarr"
    n_answers = open_zarr(task / "ablation" / "corrupted.zarr").sizes["token"]
    assert _task_repairs(str(sums_path), n_answers).sizes["component"] > 0
    sums = open_zarr(sums_path).load()
    n_all = sums.n_all.values.copy()
    n_all[n_all > 0] += np.arange((n_all > 0).sum()) == 0  # the first measured head: once more
    damaged = tmp_path / "sums-corrupted.zarr"
    write_zarr(sums.assign(n_all=(sums.n_all.dims, n_all)), damaged)
    with pytest.raises(
        DamagedStore,
        match=rf"sums-corrupted.zarr is damaged: the stores summed "
        rf"{n_answers + 1} tokens where n_all must be {n_answers} .*task's "
        rf"{n_answers} answers",
    ):
        _task_repairs(str(damaged), n_answers)
