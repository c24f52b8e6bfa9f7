"""Mechanism figures: each returns a Figure with the expected panels, titles, labels (logits
where the quantity is one), reference lines and data."""

from __future__ import annotations

import numpy as np
import pytest
import xarray as xr

from selfrepair.analysis.mechanisms import classify_reinforcement
from selfrepair.plots.common import IDENTITY_GID, ZERO_GID, reference_lines, save_figure
from selfrepair.plots.mechanisms import (
    ONE_GID,
    cumulative_neuron_share,
    ln_scale_ratio_hist,
    neuron_threshold_curves,
    resid_norm_ratio_hists,
    self_repression_scatter,
    top_neuron_scatter,
)

RNG = np.random.default_rng(0)


def panels(fig):
    return [ax for ax in fig.axes if ax.get_label() != "<colorbar>"]


def colorbars(fig):
    return [ax for ax in fig.axes if ax.get_label() == "<colorbar>"]


def has_line_at_one(ax) -> bool:
    return any(line.get_gid() == ONE_GID for line in ax.get_lines())


def test_ln_scale_ratio_panels_per_ablation_with_share_above_one():
    ratios = {
        "resample": xr.DataArray(np.array([0.9, 1.1, 1.2, 1.3])),
        "zero": xr.DataArray(np.array([1.1, 1.2])),
    }
    fig = ln_scale_ratio_hist(ratios, "m L3H1")
    axes = panels(fig)
    assert [ax.get_title().split("\n")[0] for ax in axes] == [
        "m L3H1, resample ablation",
        "m L3H1, zero ablation",
    ]
    assert "75.0% of tokens above 1" in axes[0].get_title()
    assert "100.0% of tokens above 1" in axes[1].get_title()
    assert all(has_line_at_one(ax) for ax in axes)
    assert axes[0].get_xlabel() == "clean / ablated final LayerNorm scale"
    assert sum(p.get_height() for p in axes[0].patches) == 4  # every token counted
    # Panels compare bin for bin: the same bins and x range in every panel.
    edges = [[p.get_x() for p in ax.patches] for ax in axes]
    assert edges[0] == edges[1] and axes[0].get_xlim() == axes[1].get_xlim()


def test_resid_norm_ratio_rows_are_ablations_and_columns_heads():
    da = xr.DataArray(
        RNG.uniform(0.8, 1.2, (2, 3, 5)),
        dims=("head", "batch", "pos"),
        coords={"head": ["L3H0", "L3H3"]},
    )
    fig = resid_norm_ratio_hists({"resample": da, "mean": da, "zero": da}, "m")
    axes = panels(fig)
    assert len(axes) == 6
    assert axes[1].get_title().startswith("m L3H3, resample ablation")
    assert axes[4].get_title().startswith("m L3H0, zero ablation")
    share = float(np.mean(da.sel(head="L3H3").values > 1))
    assert f"{share:.1%} of tokens above 1" in axes[1].get_title()
    assert all(has_line_at_one(ax) for ax in axes)
    assert len({ax.get_xlim() for ax in axes}) == 1  # one scale for every head and ablation


def reductions(n_tok=30, d_mlp=20, ranks=20) -> xr.Dataset:
    return xr.Dataset(
        {
            "top_neuron_de_clean": ("token", RNG.normal(size=n_tok)),
            "top_neuron_de_ablated": ("token", RNG.normal(size=n_tok)),
            "mlp_de_clean": ("token", RNG.normal(size=n_tok)),
            "cumulative_abs_share": ("rank", np.linspace(0.1, 1, ranks)),
            "rank_median_clean_de": ("rank", RNG.normal(size=ranks)),
            "top_n_frequency": ("neuron", RNG.uniform(0, 0.3, d_mlp)),
            "median_clean_de": ("neuron", RNG.normal(size=d_mlp)),
            "repair_fraction": (
                ("rank", "threshold"),
                np.sort(RNG.uniform(size=(ranks, 3)), 0)[::-1],
            ),
        },
        coords={"rank": np.arange(1, ranks + 1), "threshold": [0.5, 0.1, 0.05]},
        attrs={"top_n": 10},
    )


def test_top_neuron_scatter_has_identity_logit_labels_and_colour_bar():
    red = reductions()
    fig = top_neuron_scatter(red, "m L2H1")
    (ax,) = panels(fig)
    assert ax.get_title() == "m L2H1"
    assert ax.get_xlabel() == "top neuron's clean direct effect (logits)"
    assert ax.get_ylabel() == "top neuron's ablated direct effect (logits)"
    assert reference_lines(ax) == {IDENTITY_GID, ZERO_GID}
    (bar,) = colorbars(fig)
    assert bar.get_ylabel() == "MLP layer's clean direct effect (logits)"
    offsets = ax.collections[0].get_offsets()
    np.testing.assert_allclose(offsets[:, 0], red.top_neuron_de_clean.values)
    np.testing.assert_allclose(offsets[:, 1], red.top_neuron_de_ablated.values)


def test_threshold_curves_one_panel_per_head_one_line_per_threshold():
    red = reductions()
    fig = neuron_threshold_curves(
        {
            "a L1H1": red.repair_fraction,
            "b L2H2": red.repair_fraction,
            "c L0H0": red.repair_fraction,
        },
        ranks=12,
    )
    axes = panels(fig)
    assert [ax.get_title() for ax in axes] == ["a L1H1", "b L2H2", "c L0H0"]
    for ax in axes:
        lines = ax.get_lines()
        assert len(lines) == 3
        assert lines[0].get_xdata().tolist() == list(range(1, 13))
        np.testing.assert_allclose(
            lines[1].get_ydata(), red.repair_fraction.sel(threshold=0.1).values[:12]
        )
        assert ax.get_ylim() == (0, 1)
    assert axes[0].get_ylabel() == "share of tokens" and axes[1].get_ylabel() == ""
    assert axes[2].get_xlabel() == "k-th best self-repairing neuron"
    assert [t.get_text() for t in fig.legends[0].get_texts()] == ["50%", "10%", "5%"]


def test_cumulative_share_panels_and_frequency_sorted():
    red = reductions()
    fig = cumulative_neuron_share(red, "m L2H1")
    left, right = panels(fig)
    assert left.get_title() == "m L2H1"
    assert left.get_xlabel() == "top k self-repairing neurons"
    np.testing.assert_allclose(left.collections[0].get_offsets()[:, 1], red.cumulative_abs_share)
    heights = [p.get_height() for p in right.patches]
    assert heights == sorted(heights, reverse=True)
    assert heights[0] == pytest.approx(red.top_n_frequency.max().item())
    assert right.get_ylabel() == "share of tokens in the top 10"
    (bar,) = colorbars(fig)
    assert bar.get_ylabel() == "median clean direct effect (logits)"
    # Bars carry each neuron's own median clean DE: the most frequent neuron's colour.
    best = int(np.argmax(red.top_n_frequency.values))
    cmap, norm = left.collections[0].get_cmap(), left.collections[0].norm
    np.testing.assert_allclose(
        right.patches[0].get_facecolor(), cmap(norm(red.median_clean_de.values[best]))
    )


def test_self_repression_one_panel_per_scale_with_slope():
    clean = RNG.normal(size=(1, 4, 6))
    ds = xr.Dataset(
        {
            "de_clean": (("head", "batch", "pos"), clean),
            "de_new": (
                ("head", "scale", "batch", "pos"),
                np.stack([[0.5 * clean[0], 0.2 * clean[0]]]),
            ),
        },
        coords={"head": ["L3H1"], "scale": [1.0, 3.0]},
    )
    ds = xr.merge([ds, classify_reinforcement(ds)]).isel(head=0)
    fig = self_repression_scatter(ds, "m L3H1")
    axes = panels(fig)
    assert [ax.get_title() for ax in axes] == [
        "m L3H1, scale 1\nslope 0.50",
        "m L3H1, scale 3\nslope 0.20",
    ]
    assert all(reference_lines(ax) == {IDENTITY_GID, ZERO_GID} for ax in axes)
    assert axes[0].get_ylabel() == "direct effect with\noutput added (logits)"
    assert axes[1].get_xlabel() == "clean direct effect (logits)"
    assert len(panels(self_repression_scatter(ds, "m L3H1", [3.0]))) == 1


def test_figures_save_as_pdf_and_png(tmp_path):
    fig = top_neuron_scatter(reductions(), "m L2H1")
    save_figure(fig, tmp_path / "f.pdf", tmp_path / "f.png")
    assert (tmp_path / "f.pdf").read_bytes()[:4] == b"%PDF"
    assert (tmp_path / "f.png").read_bytes()[:4] == b"\x89PNG"
