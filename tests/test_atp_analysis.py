"""Attribution patching against the exact effects (analysis.atp, stages.atp, plots.atp,
rules/atp.smk): the reductions against brute force on per-token data, the identities they must
keep, the figures, the config switch through `snakemake -n`, and the reduced demo's stores."""

from __future__ import annotations

import itertools
import re

import numpy as np
import pandas as pd
import pytest
import torch
import xarray as xr
import yaml
from helpers import ROOT, merged, reduced_demo_config, snakemake

from selfrepair.analysis import atp as judge
from selfrepair.analysis.attribution import shard_top_mask, top_token_indices
from selfrepair.analysis.reduce import head_summary
from selfrepair.plots.atp import MINUS_X_GID, atp_error, atp_scatter
from selfrepair.plots.common import IDENTITY_GID, ZERO_GID, reference_lines
from selfrepair.reference.heads import head_values
from selfrepair.stages.atp import measured_heads, read_estimates
from selfrepair.stages.store import DamagedStore, open_zarr, write_zarr

L, H, ROWS, POS, FRACTION = 3, 4, 6, 5, 0.1


def token_data(seed: int = 0) -> xr.Dataset:
    """Per-token head variables that keep Eq. 1 and Eq. 2."""
    rng = np.random.default_rng(seed)
    dims, shape = ("layer", "head", "batch", "pos"), (L, H, ROWS, POS)

    def draw():
        return rng.normal(size=shape).astype(np.float32)

    data = head_values(*(draw() for _ in range(5)), ln_scale_ablated=np.ones(shape, np.float32))
    return xr.Dataset({k: (dims, v) for k, v in data.items()})


def estimates(atp_tok, gd_tok, mask, top_graddrop=True) -> xr.Dataset:
    """What the atp stores hold, from per-token estimates: per row, and per row over each
    head's top tokens (mask [layer, head, batch, pos]), GradDrop as the atp job reduces
    measure_atp's per-layer rows (graddrop_stored)."""
    return judge.graddrop_stored(per_layer_estimates(atp_tok, gd_tok, mask, top_graddrop))


def per_layer_estimates(atp_tok, gd_tok, mask, top_graddrop=True) -> xr.Dataset:
    """What measure_atp returns, from per-token estimates (GradDrop per dropped layer)."""
    dims, drop_dims = ("layer", "head", "batch"), ("drop_layer", "layer", "head", "batch")
    data = {
        "atp_row": (dims, atp_tok.sum(-1)),
        "graddrop_row": (drop_dims, gd_tok.sum(-1)),
        "n_scored": ("batch", np.full(ROWS, float(POS))),
        "atp_top": (dims, np.where(mask, atp_tok, 0).sum(-1)),
        "n_top": (dims, mask.sum(-1)),
    }
    if top_graddrop:
        data["graddrop_top"] = (drop_dims, np.where(mask, gd_tok, 0).sum(-1))
    return xr.Dataset(data)


@pytest.fixture(scope="module")
def judged():
    """(per-token data, estimates, top-token mask, atp_summary) of a synthetic model whose AtP
    is the exact change plus noise on some heads and its direct change on others."""
    tokens = token_data()
    rng = np.random.default_rng(1)
    indices = top_token_indices(tokens.de_clean, FRACTION).values  # [layer, head, rank]
    mask = shard_top_mask(indices, 0, ROWS, POS)
    exact = tokens.logit_diff.values.astype(float)
    atp_tok = exact + rng.normal(scale=0.3, size=exact.shape)
    atp_tok[0] = (tokens.de_ablated - tokens.de_clean).values[0]  # layer 0: no indirect part
    gd_tok = np.stack([atp_tok * (1 + 0.1 * d) for d in range(L)])  # [drop, l, h, b, p]
    dims = ("layer", "head", "batch")
    exact_rows = xr.DataArray(exact.sum(-1), dims=dims)
    exact_top = xr.DataArray(np.where(mask, exact, 0).sum(-1), dims=dims)
    heads = head_summary(tokens, top_fraction=FRACTION)
    ests = estimates(atp_tok, gd_tok, mask)
    summary = judge.atp_summary(ests, exact_rows, exact_top, heads, top_k=3)
    return tokens, atp_tok, gd_tok, mask, summary


def test_means_are_brute_force_over_tokens(judged):
    tokens, atp_tok, gd_tok, mask, s = judged
    heads = head_summary(tokens, top_fraction=FRACTION)
    np.testing.assert_allclose(s.all_exact, heads.mean_logit_diff, atol=1e-6)
    np.testing.assert_allclose(s.top_exact, heads.top_logit_diff, atol=1e-6)
    np.testing.assert_allclose(s.all_atp, atp_tok.mean((-2, -1)), atol=1e-9)
    for layer in range(L):
        for head in range(H):
            m = mask[layer, head]
            # the mean over top tokens is the mean of per-token estimates (AtP is linear)
            assert s.top_atp.values[layer, head] == pytest.approx(atp_tok[layer, head][m].mean())
            # magnitudes per unit: a row's top tokens of the head, rows without any left out
            units = m.any(-1)
            count = m.sum(-1)[units]
            top_sum = np.where(m, gd_tok[:, layer, head], 0).sum(-1)[:, units]
            gd = np.abs(top_sum).sum(0) / (L - 1) / count
            assert s.top_graddrop.values[layer, head] == pytest.approx(gd.mean())
            atp_sum = np.where(m, atp_tok[layer, head], 0).sum(-1)[units]
            expected = np.mean(np.abs(atp_sum) / count)
            assert s.top_abs_atp.values[layer, head] == pytest.approx(expected)
            rows = atp_tok[layer, head].sum(-1)
            assert s.all_abs_atp.values[layer, head] == pytest.approx(np.mean(np.abs(rows) / POS))
            exact_rows = tokens.logit_diff.values[layer, head].sum(-1)
            expected = np.mean(np.abs(exact_rows) / POS)
            assert s.all_abs_exact.values[layer, head] == pytest.approx(expected, rel=1e-5)
    np.testing.assert_allclose(s.top_self_repair, heads.top_self_repair)
    np.testing.assert_allclose(s.all_de_change, heads.mean_de_ablated - heads.mean_de_clean)


def test_graddrop_is_brute_force_over_tokens(judged):
    """GradDrop per dropped layer: the mean over tokens of the per-token estimates; combined:
    per row, (1 / (L - 1)) sum over dropped layers of |the row's estimate|, per token."""
    _, _, gd_tok, mask, s = judged
    per_layer = gd_tok.sum((-2, -1)) / (ROWS * POS)
    np.testing.assert_allclose(s.all_graddrop_layer, per_layer, atol=1e-12, rtol=0)
    top = np.where(mask, gd_tok, 0).sum((-2, -1)) / mask.sum((-2, -1))
    np.testing.assert_allclose(s.top_graddrop_layer, top, atol=1e-12, rtol=0)
    rows = np.abs(gd_tok.sum(-1)).sum(0) / (L - 1) / POS  # [layer, head, batch]
    np.testing.assert_allclose(s.all_graddrop, rows.mean(-1), atol=1e-12, rtol=0)


def shard_stores(tmp_path, ds: xr.Dataset, bounds: list[int]) -> list[str]:
    """ds's rows as atp stores of the shards [bounds[i], bounds[i + 1]), each reduced as the
    atp job reduces its own rows (graddrop_stored)."""
    paths = []
    for i, (start, stop) in enumerate(itertools.pairwise(bounds)):
        one = ds.isel(batch=slice(start, stop)).assign_coords(batch=np.arange(start, stop))
        one = judge.graddrop_stored(one).assign(metric_clean=one.n_scored)
        paths.append(str(tmp_path / f"shard-{i:03d}.zarr"))
        write_zarr(one, paths[-1])
    return paths


def test_shard_stores_give_the_summary_of_the_per_layer_rows(judged, tmp_path):
    """Float32 per-layer rows in 3 shard stores: each GradDrop per row combined is bitwise the
    combination of all rows at once, so the summary's graddrop is bitwise what it was from the
    per-layer rows; per dropped layer, the float64 sums of the shards add up to the float32
    sum of all rows but for rounding."""
    tokens, atp_tok, gd_tok, mask, _ = judged
    rows = per_layer_estimates(atp_tok.astype(np.float32), gd_tok.astype(np.float32), mask)
    stored = read_estimates(shard_stores(tmp_path, rows, [0, 2, 3, ROWS]))
    assert "graddrop_row" not in stored and "graddrop_top" not in stored
    for unit in ("row", "top"):
        per_layer = rows[f"graddrop_{unit}"].values
        combined = stored[f"graddrop_{unit}_combined"].values
        assert combined.dtype == np.float32 and stored[f"graddrop_{unit}_sum"].dtype == np.float64
        np.testing.assert_array_equal(combined, np.abs(per_layer).sum(0) / (L - 1))
        summed = per_layer.astype(np.float64).sum(-1)
        np.testing.assert_allclose(stored[f"graddrop_{unit}_sum"], summed, atol=1e-12, rtol=0)
    dims = ("layer", "head", "batch")
    exact = tokens.logit_diff.values.astype(float)
    args = (
        xr.DataArray(exact.sum(-1), dims=dims),
        xr.DataArray(np.where(mask, exact, 0).sum(-1), dims=dims),
        head_summary(tokens, top_fraction=FRACTION),
    )
    s = judge.atp_summary(stored, *args, top_k=3)
    for sel in judge.SELECTIONS:
        scale = rows.n_scored.values if sel == "all" else rows.n_top.values
        per_layer = rows[f"graddrop_{'row' if sel == 'all' else 'top'}"].values
        old = _old_selection_values(per_layer, np.broadcast_to(scale, (L, H, ROWS)))
        np.testing.assert_array_equal(s[f"{sel}_graddrop"], old["graddrop"])
        gap = np.abs(s[f"{sel}_graddrop_layer"].values - old["graddrop_layer"]).max()
        assert gap <= 1e-6, (sel, gap)


def _old_selection_values(per_layer: np.ndarray, scale: np.ndarray) -> dict[str, np.ndarray]:
    """GradDrop's summary values as atp_summary formed them from the per-layer rows of all
    shards at once (float32 [drop, layer, head, unit])."""
    tokens, unit = scale.sum(-1), scale > 0
    per_token = np.divide(1.0, scale, out=np.zeros(scale.shape), where=unit)
    combined = np.abs(per_layer).sum(0) / (per_layer.shape[0] - 1)
    mean = np.where(unit, combined * per_token, 0.0).sum(-1) / unit.sum(-1)
    return {"graddrop": mean, "graddrop_layer": per_layer.sum(-1) / tokens}


def test_a_store_with_per_layer_graddrop_rows_is_stale(judged, tmp_path):
    _, atp_tok, gd_tok, mask, _ = judged
    old = per_layer_estimates(atp_tok, gd_tok, mask).assign_coords(batch=np.arange(ROWS))
    path = tmp_path / "shard-000.zarr"
    write_zarr(old.assign(metric_clean=old.n_scored), path)
    with pytest.raises(DamagedStore, match="lacks variables graddrop_row_combined"):
        read_estimates([str(path)])


def test_the_error_decomposes_into_self_repair_and_atps_indirect_part(judged):
    *_, s = judged
    for sel in judge.SELECTIONS:
        parts = s[f"{sel}_sr_heads"] + s[f"{sel}_sr_mlps"] + s[f"{sel}_sr_ln"]
        np.testing.assert_allclose(parts, s[f"{sel}_self_repair"], atol=1e-5)
        error = s[f"{sel}_atp_indirect"] - s[f"{sel}_self_repair"]
        np.testing.assert_allclose(error, s[f"{sel}_atp_error"], atol=1e-5)
        shares = sum(s[f"{sel}_share_{p}"] for p in ("sr_heads", "sr_mlps", "sr_ln"))
        total = shares + s[f"{sel}_share_atp_indirect"]
        np.testing.assert_allclose(total, 1.0, atol=1e-4)
        np.testing.assert_allclose(shares, s[f"{sel}_share_self_repair"], atol=1e-4)
    # Layer 0's AtP is its direct change: its error is minus its self-repair, share 1.
    np.testing.assert_allclose(s.all_share_self_repair[0], 1.0, atol=1e-5)


def test_rank_correlation_misses_r_squared_and_slope():
    a = np.array([3.0, 1.0, 2.0, np.nan, 5.0])
    b = np.array([30.0, 10.0, 25.0, 7.0, 4.0])
    # ranks [3, 1, 2, 4] and [4, 2, 3, 1]: Pearson -1 / 5 (the NaN pair is left out)
    assert judge.spearman(a, b) == pytest.approx(-0.2)
    # ties take their average rank: [1.5, 1.5, 3] against [1, 2, 3]
    assert judge.spearman(np.array([1.0, 1.0, 2.0]), np.arange(3.0)) == pytest.approx(0.75**0.5)
    assert judge.spearman(np.arange(5.0), np.arange(5.0) ** 3) == pytest.approx(1.0)
    exact = np.array([[5.0, 4.0], [3.0, np.nan]])
    estimate = np.array([[5.0, 0.0], [3.0, 9.0]])  # the unmeasured head cannot take a place
    missed = judge.missed_heads(exact, estimate, 2)
    assert missed.tolist() == [[False, True], [False, False]]
    error = np.array([1.0, -2.0, 0.5, np.nan])
    assert judge.r_squared(error, -3 * error + 1) == pytest.approx(1.0)
    assert judge.r_squared(np.array([1.0, 0, -1, 0]), np.array([0.0, 1, 0, -1])) == 0.0
    assert judge.slope_through_origin(2 * error, error) == pytest.approx(2.0)
    assert np.isnan(judge.slope_through_origin(error, np.zeros(4)))


def test_summary_flags_and_correlations(judged):
    *_, s = judged
    for sel in judge.SELECTIONS:
        assert int(s[f"{sel}_exact_top_k"].sum()) == 3
        assert not (s[f"{sel}_missed_atp"] & ~s[f"{sel}_exact_top_k"]).any()
        a, b = s[f"{sel}_exact"].values.ravel(), s[f"{sel}_atp"].values.ravel()
        ranks = [np.argsort(np.argsort(x)) for x in (a, b)]  # no ties in these values
        expected = np.corrcoef(*ranks)[0, 1]
        assert float(s[f"{sel}_spearman_atp"]) == pytest.approx(expected)


def _judge_heads(judged, top_k: int, measured: list[tuple[int, int]]) -> xr.Dataset:
    """atp_summary of the judged model with only `measured` heads measured (NaN elsewhere, as
    the stores of a model with `heads:` hold)."""
    tokens, atp_tok, gd_tok, mask, _ = judged
    keep = measured_heads(measured, (L, H))
    exact = np.where(keep[..., None, None], tokens.logit_diff.values.astype(float), np.nan)
    heads = head_summary(tokens, top_fraction=FRACTION)
    heads = heads.where(xr.DataArray(keep, dims=("layer", "head")))
    dims = ("layer", "head", "batch")
    return judge.atp_summary(
        estimates(atp_tok, gd_tok, mask),
        xr.DataArray(exact.sum(-1), dims=dims),  # NaN on the heads not measured
        xr.DataArray(np.where(mask, exact, 0).sum(-1), dims=dims),
        heads,
        top_k=top_k,
    )


def test_top_k_is_clipped_below_the_heads_measured(judged):
    every = [(layer, head) for layer in range(L) for head in range(H)]
    cases = [(L * H, every, L * H - 1), (99, every[:4], 3), (2, every[:4], 2), (5, [(1, 2)], 0)]
    for top_k, measured, used in cases:
        s = _judge_heads(judged, top_k, measured)
        assert (s.attrs["top_k"], s.attrs["top_k_used"]) == (top_k, used)
        for sel in judge.SELECTIONS:
            assert int(s[f"{sel}_exact_top_k"].sum()) == used
            # a head left out of the exact top k can always be ranked in by an estimate
            assert int(s[f"{sel}_exact_top_k"].sum()) < len(measured) or used == 0
            assert not s[f"{sel}_missed_atp"].values[np.isnan(s[f"{sel}_exact"].values)].any()
    # One head: its estimate against its exact effect is still there; no misses.
    s = _judge_heads(judged, 5, [(1, 2)])
    assert np.isfinite(float(s.top_atp_error.sel(layer=1, head=2)))
    assert not s.top_missed_atp.any() and not s.all_missed_graddrop.any()


def test_without_graddrop_on_the_top_tokens_its_values_are_nan(judged):
    tokens, atp_tok, gd_tok, mask, s = judged
    dims = ("layer", "head", "batch")
    exact = tokens.logit_diff.values.astype(float)
    summary = judge.atp_summary(
        estimates(atp_tok, gd_tok, mask, top_graddrop=False),
        xr.DataArray(exact.sum(-1), dims=dims),
        xr.DataArray(np.where(mask, exact, 0).sum(-1), dims=dims),
        head_summary(tokens, top_fraction=FRACTION),
        top_k=3,
    )
    assert np.isnan(summary.top_graddrop).all() and np.isnan(float(summary.top_spearman_graddrop))
    assert not summary.top_missed_graddrop.any()
    np.testing.assert_array_equal(summary.top_atp, s.top_atp)
    np.testing.assert_array_equal(summary.all_graddrop, s.all_graddrop)
    fig = atp_scatter({"model-a": summary}, FRACTION)
    titles = [ax.get_title() for ax in fig.axes if ax.get_label() != "<colorbar>"]
    assert titles[2].endswith(", no GradDrop here")


def test_table_lists_the_most_under_estimated_heads(judged):
    *_, s = judged
    table = judge.atp_table(s, 4, lambda head: [("LN", 0.5), (f"MLP{head[0]}", 0.1)])
    shortfall = np.sort(s.top_abs_shortfall.values.ravel())[::-1][:4]
    np.testing.assert_allclose(table["|exact| − |AtP|"], shortfall)
    assert table["top repairers (mean ΔDE on top tokens)"].iloc[0].startswith("LN (+0.500)")
    page = judge.atp_table_html(table.assign(model="m", ablation="zero"), "note")
    assert "m, zero ablation" in page and "note" in page


def test_figures_draw_every_head_with_their_reference_lines(judged):
    *_, s = judged
    summaries = {"model-a": s, "model-b": s}
    fig = atp_scatter(summaries, FRACTION)
    panels = [ax for ax in fig.axes if ax.get_label() != "<colorbar>"]
    assert len(panels) == 6
    for ax in panels:
        assert IDENTITY_GID in reference_lines(ax)
        assert "logits" in ax.get_xlabel() and "logits" in ax.get_ylabel()
    assert panels[0].get_title().startswith("model-a, all tokens")
    assert len(panels[2].collections[0].get_offsets()) == L * H  # one point per head
    fig = atp_error(summaries, FRACTION)
    panels = [ax for ax in fig.axes if ax.get_label() != "<colorbar>"]
    assert len(panels) == 4
    for ax in panels:
        gids = {line.get_gid() for line in ax.get_lines()}
        assert {MINUS_X_GID, ZERO_GID} <= gids
    assert "r²" in panels[1].get_title() and "× self-repair" in panels[1].get_title()


# --- the config switch through the workflow ---------------------------------------------------


def _dry_run(tmp_path, extra: dict) -> tuple[int, str]:
    config = merged(reduced_demo_config(), extra)
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    proc = snakemake(
        "-n", "--cores", "1", "--configfile", str(path), "--quiet", "rules", cwd=ROOT, timeout=600
    )
    return proc.returncode, proc.stdout + proc.stderr


def test_atp_is_on_by_default_and_off_with_its_key(tmp_path):
    code, on = _dry_run(tmp_path, {})
    assert code == 0, on[-3000:]
    counts = {r: int(n) for r, n in re.findall(r"^(atp\w*)\s+(\d+)", on, re.M)}
    # 2 models x 2 shards, each job all 3 ablations; a summary per model and ablation; 2
    # figures, 1 table
    assert counts == {"atp": 4, "atp_summary": 6, "atp_scatter": 1, "atp_error": 1, "atp_table": 1}
    code, rows_only = _dry_run(tmp_path, {"engine": {"atp_top_graddrop": False}})
    assert code == 0 and re.search(r"^atp\s+4$", rows_only, re.M), rows_only[-3000:]
    code, off = _dry_run(tmp_path, {"engine": {"atp": False}})
    assert code == 0, off[-3000:]
    assert not re.search(r"^atp\w*\s+\d+", off, re.M)
    ablate = re.compile(r"^ablate\s+(\d+)", re.M)
    assert ablate.search(off)[1] == ablate.search(on)[1]


def test_top_k_is_checked_by_the_schema_not_against_head_counts(tmp_path):
    # 16 is every head of tiny-gpt2: planned, and judged with k = 15 (test_top_k_is_clipped_...)
    code, out = _dry_run(tmp_path, {"figures": {"atp": {"top_k": 16}}})
    assert code == 0, out[-2000:]
    code, out = _dry_run(tmp_path, {"figures": {"atp": {"top_k": 0}}})
    assert code != 0 and "figures.atp.top_k" in out
    code, out = _dry_run(tmp_path, {"engine": {"atp_top_graddrop": "yes"}})
    assert code != 0 and "engine.atp_top_graddrop" in out


def test_a_model_measuring_one_head_is_planned_with_atp_on(tmp_path):
    """As paper-llama.yaml's llama-7b (heads: [[30, 8]]): its AtP is measured, nothing ranked."""
    config = reduced_demo_config()
    name = "tiny-one-head"  # a model of its own: the figures' substitutes pick from the others
    config["models"].append(config["models"][0] | {"name": name, "heads": [[0, 0]]})
    path = tmp_path / "one-head.yaml"
    path.write_text(yaml.safe_dump(config))
    proc = snakemake(
        "-n", "--cores", "1", "--configfile", str(path), "--quiet", "rules", cwd=ROOT, timeout=600
    )
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-2000:]
    # one more model: 2 shards more atp jobs (each all 3 ablations), and its 3 summaries
    counts = {r: int(n) for r, n in re.findall(r"^(atp\w*)\s+(\d+)", out, re.M)}
    assert counts["atp"] == 6 and counts["atp_summary"] == 9, counts


# --- the reduced demo's stores (tests/conftest.py finished_run) ---------------------------------


@pytest.mark.slow
def test_demo_atp_stores_are_the_engine_on_the_shard_and_the_exact_side_matches(finished_run):
    """Each model's first-shard atp store counts exactly each head's top tokens per row, and
    (resample) is measure_atp on that shard's rows with the demo model; each summary's exact
    means are the head summary's and its error shares add up to 1."""
    from selfrepair.engine.atp import measure_atp
    from selfrepair.models.loading import load_local_checkpoint

    run, _ = finished_run
    results = run / "results"
    for model_name in ("tiny-gpt2", "tiny-pythia"):
        model = load_local_checkpoint(str(run / "resources" / "models" / model_name))
        indices = open_zarr(results / model_name / "attribution" / "top_tokens.zarr").token.values
        tokens = open_zarr(results / model_name / "tokens.zarr").tokens.values
        for ablation in ("resample", "mean", "zero"):
            stored = open_zarr(results / model_name / "atp" / ablation / "shard-000.zarr").load()
            n_rows, n_pos = stored.sizes["batch"], stored.attrs["n_pos"]
            top = shard_top_mask(indices, 0, n_rows, n_pos)
            assert np.array_equal(stored.n_top.values, top.sum(-1))
            assert "graddrop_top_combined" in stored  # the demos set engine.atp_top_graddrop
            if ablation == "resample":  # one ablation rerun (the engine's tests cover them all)
                rows = torch.from_numpy(tokens[:n_rows].astype(np.int64))
                fresh = judge.graddrop_stored(measure_atp(model, rows, ablation, top=top))
                for name in (
                    "atp_row",
                    "atp_top",
                    "graddrop_row_combined",
                    "graddrop_top_combined",
                ):
                    np.testing.assert_allclose(stored[name], fresh[name], atol=1e-4)
                for name in ("graddrop_row_sum", "graddrop_top_sum"):
                    np.testing.assert_allclose(stored[name], fresh[name], atol=n_rows * 1e-4)
            summary = open_zarr(results / model_name / "atp" / f"{ablation}.zarr").load()
            heads = open_zarr(results / model_name / "summary" / f"{ablation}.zarr")
            np.testing.assert_allclose(summary.all_exact, heads.mean_logit_diff, atol=1e-5)
            np.testing.assert_allclose(summary.top_exact, heads.top_logit_diff, atol=1e-5)
            shares = summary.top_share_self_repair + summary.top_share_atp_indirect
            assert float(np.abs(shares - 1).max()) < 1e-3
            assert np.isfinite(float(summary.all_spearman_atp))
    table = pd.read_csv(results / "tables" / "atp_heads.csv")
    assert set(table.model) == {"tiny-gpt2", "tiny-pythia"} and len(table) == 2 * 3 * 8
    assert table["top repairers (mean ΔDE on top tokens)"].notna().all()
