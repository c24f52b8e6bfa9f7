"""Reductions behind the figures, against hand computations on small synthetic Datasets."""

from __future__ import annotations

import numpy as np
import pytest
import xarray as xr

from selfrepair.analysis.intervals import head_intervals
from selfrepair.analysis.reduce import (
    FROZEN_LN_VARIANTS,
    frozen_ln_layers,
    head_effect_drops,
    head_summary,
    head_tokens,
    layer_mean,
)
from selfrepair.analysis.tables import head_table

DIMS = ("layer", "head", "batch", "pos")


def consistent(n_layers=2, n_heads=3, n_batch=4, n_pos=5, seed=0) -> xr.Dataset:
    """Random measurements that obey the engine's identities: the parts sum to self-repair,
    and self_repair = logit_diff - (de_ablated - de_clean)."""
    rng = np.random.default_rng(seed)
    shape = (n_layers, n_heads, n_batch, n_pos)

    def draw():
        return rng.normal(size=shape)

    de_clean, de_ablated, sr_heads, sr_mlps, sr_ln = (draw() for _ in range(5))
    self_repair = sr_heads + sr_mlps + sr_ln
    logit_diff = self_repair + de_ablated - de_clean
    data = dict(
        de_clean=de_clean,
        de_ablated=de_ablated,
        sr_heads=sr_heads,
        sr_mlps=sr_mlps,
        sr_ln=sr_ln,
        self_repair=self_repair,
        logit_diff=logit_diff,
        ln_scale_ablated=np.abs(draw()) + 1,
    )
    return xr.Dataset({k: (DIMS, v) for k, v in data.items()})


def test_effect_drops_are_clean_minus_ablated_and_differ_by_self_repair():
    ds = consistent()
    summary = head_summary(ds, top_fraction=0.25)
    for selection in ("mean", "top"):
        drops = head_effect_drops(summary, selection)
        for layer in range(2):
            for head in range(3):
                de = ds.de_clean.values[layer, head].ravel()
                da = ds.de_ablated.values[layer, head].ravel()
                dl = ds.logit_diff.values[layer, head].ravel()
                sel = (
                    np.arange(de.size)
                    if selection == "mean"
                    else np.argsort(-de, kind="stable")[:5]
                )
                assert drops.de_drop.values[layer, head] == pytest.approx(
                    (de[sel] - da[sel]).mean()
                )
                assert drops.logit_drop.values[layer, head] == pytest.approx(-dl[sel].mean())
        np.testing.assert_allclose(
            drops.de_drop - drops.logit_drop, summary[f"{selection}_self_repair"], atol=1e-12
        )


def test_head_tokens_reads_the_named_heads_token_by_token():
    ds = consistent(n_layers=3, n_heads=4)
    out = head_tokens(ds, [(2, 1), (0, 3)])
    assert list(out.head_name.values) == ["L2H1", "L0H3"]
    assert out.sizes["token"] == 4 * 5
    for name, (layer, head) in (("L2H1", (2, 1)), ("L0H3", (0, 3))):
        de = ds.de_clean.values[layer, head].ravel()  # batch-major, as stack orders tokens
        da = ds.de_ablated.values[layer, head].ravel()
        np.testing.assert_allclose(out.de_drop.sel(head_name=name), de - da)
        np.testing.assert_allclose(
            out.logit_drop.sel(head_name=name), -ds.logit_diff.values[layer, head].ravel()
        )


def test_head_tokens_refuses_heads_outside_the_model_or_not_measured():
    ds = consistent()
    with pytest.raises(ValueError, match="L2H0 is not a head of this model"):
        head_tokens(ds, [(2, 0)])
    ds["de_clean"][1, 1] = np.nan
    with pytest.raises(ValueError, match="L1H1"):
        head_tokens(ds, [(1, 1)])


def test_layer_mean_skips_unmeasured_heads():
    values = xr.DataArray([[1.0, 3.0, np.nan], [np.nan, np.nan, np.nan]], dims=("layer", "head"))
    got = layer_mean(values).values
    assert got[0] == 2.0 and np.isnan(got[1])


def test_frozen_ln_layers_by_hand():
    normal = head_summary(consistent(seed=1), top_fraction=0.25)
    frozen = head_summary(consistent(seed=2), top_fraction=0.25)
    got = frozen_ln_layers(normal, frozen)
    assert list(got.variant.values) == list(FROZEN_LN_VARIANTS)
    for layer in range(2):
        want = [
            normal.top_self_repair.values[layer].mean(),
            (normal.top_sr_heads.values[layer] + normal.top_sr_mlps.values[layer]).mean(),
            frozen.top_self_repair.values[layer].mean(),
        ]
        np.testing.assert_allclose(got.values[:, layer], want, rtol=1e-12)
    # Final LN frozen = normal minus the final LN's part, per layer.
    np.testing.assert_allclose(
        got.sel(variant="normal") - got.sel(variant="final LN frozen"),
        layer_mean(normal.top_sr_ln),
        atol=1e-12,
    )


def test_head_table_has_one_row_per_measured_head_with_its_numbers_and_bounds():
    runs = {}
    for i, key in enumerate([("m-a", "resample"), ("m-a", "zero"), ("m-b", "resample")]):
        ds = consistent(seed=i)
        if key == ("m-b", "resample"):
            for name in ds.data_vars:
                ds[name][1, 2] = np.nan  # one head not measured
        summary = head_summary(ds, top_fraction=0.25)
        summary.attrs["n_tokens"] = 20
        runs[key] = (summary, head_intervals(ds, top_fraction=0.25, n_resamples=20))
    table = head_table({k: s for k, (s, _) in runs.items()}, {k: c for k, (_, c) in runs.items()})
    assert len(table) == 6 + 6 + 5
    assert list(table.columns[:5]) == ["model", "ablation", "layer", "head", "n_tokens"]
    assert not table.duplicated(["model", "ablation", "layer", "head"]).any()
    row = table[(table.model == "m-a") & (table.ablation == "zero")]
    row = row[(row["layer"] == 1) & (row["head"] == 0)].iloc[0]
    summary, bounds = runs[("m-a", "zero")]
    assert row.top_self_repair == summary.top_self_repair.values[1, 0]
    assert row.top_sr_ln == summary.top_sr_ln.values[1, 0]
    assert row.top_n_dropped == summary.top_n_dropped.values[1, 0]
    assert row.top_self_repair_low == bounds.top_self_repair.values[1, 0, 0]
    assert row.top_ln_share_clipped_high == bounds.top_ln_share_clipped.values[1, 0, 1]
    assert row.mean_self_repair_low < row.mean_self_repair < row.mean_self_repair_high
    parts = table.top_sr_heads + table.top_sr_mlps + table.top_sr_ln
    np.testing.assert_allclose(parts, table.top_self_repair, atol=1e-12)


def test_figure_modules_import_in_the_analysis_env_without_engine_packages():
    """envs/analysis.yaml has no torch, jaxtyping, jsonschema or transformer_lens: the modules
    the figure, interval and table scripts import must not need them."""
    import subprocess
    import sys
    from pathlib import Path

    code = (
        "import sys\n"
        "class Block:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name.split('.')[0] in {'torch', 'jaxtyping', 'jsonschema', "
        "'transformer_lens', 'transformers'}:\n"
        "            raise ImportError('blocked ' + name)\n"
        "sys.meta_path.insert(0, Block())\n"
        "import selfrepair.config, selfrepair.analysis.reduce, selfrepair.analysis.intervals, selfrepair.analysis.tables\n"
        "import selfrepair.analysis.substitutes, selfrepair.analysis.mechanisms\n"
        "import selfrepair.stages.store, selfrepair.stages.joblog, selfrepair.stages.summaries\n"
        "import selfrepair.stages.mechanisms\n"
        "import selfrepair.plots.common, selfrepair.plots.per_head, selfrepair.plots.effects\n"
        "import selfrepair.plots.layernorm, selfrepair.plots.captions\n"
        "import selfrepair.config.figures, selfrepair.stages.figures\n"
    )
    root = Path(__file__).resolve().parents[1]
    proc = subprocess.run(
        [sys.executable, "-c", code], cwd=root, capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
