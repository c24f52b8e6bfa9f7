"""Plotting conventions and figures: each function returns a Figure with the expected panels,
titles, labels (in logits) and reference lines; saving is atomic."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import xarray as xr
from matplotlib.collections import LineCollection
from matplotlib.figure import Figure

from selfrepair.analysis.reduce import (
    FROZEN_LN_VARIANTS,
    frozen_ln_layers,
    head_effect_drops,
    head_summary,
    head_tokens,
)
from selfrepair.plots import common
from selfrepair.plots.common import IDENTITY_GID, ZERO_GID, reference_lines
from selfrepair.plots.effects import (
    IDEAL_TITLES,
    heads_de_vs_logit_drop,
    tokens_by_ablation,
    tokens_de_vs_logit_drop,
)
from selfrepair.plots.layernorm import frozen_ln_self_repair
from selfrepair.plots.per_head import (
    ln_share_clipped_and_unclipped,
    ln_share_per_head,
    self_repair_per_head,
)
from selfrepair.variables import HEAD_VARIABLES


def token_data(n_layers=3, n_heads=2, n_batch=4, n_pos=25, seed=0) -> xr.Dataset:
    rng = np.random.default_rng(seed)
    dims = ("layer", "head", "batch", "pos")
    shape = (n_layers, n_heads, n_batch, n_pos)
    return xr.Dataset(
        {name: (dims, rng.normal(size=shape).astype(np.float32)) for name in HEAD_VARIABLES}
    )


@pytest.fixture(scope="module")
def summaries() -> dict[str, xr.Dataset]:
    return {
        "model-a": head_summary(token_data(3, 2, seed=1)),
        "model-b": head_summary(token_data(4, 3, seed=2)),
    }


def panels(fig: Figure):
    """Axes that are panels (colour bars excluded)."""
    return [ax for ax in fig.axes if ax.get_label() != "<colorbar>"]


# --- conventions -----------------------------------------------------------------------------


@pytest.mark.parametrize(("n", "ncols"), [(1, None), (4, None), (5, 2), (7, 3)])
def test_panel_grid_has_exactly_n_panels(n, ncols):
    fig, axes = common.panel_grid(n, ncols=ncols, sharex=True, sharey=True)
    assert len(fig.axes) == n and len(axes) == n


def test_shared_x_keeps_tick_labels_where_no_panel_is_below():
    fig, axes = common.panel_grid(4, ncols=3, sharex=True)  # 3 + 1: panels 1 and 2 have none
    shown = [ax.xaxis.get_tick_params()["labelbottom"] for ax in axes]
    assert shown == [False, True, True, True]


def test_model_panels_are_titled_by_model():
    fig, axes = common.model_panels(["m1", "m2", "m3"], titles={"m2": "m2 (substitute)"})
    assert [ax.get_title() for ax in fig.axes] == ["m1", "m2 (substitute)", "m3"]
    with pytest.raises(ValueError, match="must name the model"):
        common.model_panels(["m1"], titles={"m1": "other"})


def test_reference_lines_are_what_they_claim():
    fig, (ax,) = common.panel_grid(1)
    ident = common.add_identity(ax)
    zero = common.add_zero(ax)
    ax.set_xlim(-3, 5)
    ax.set_ylim(-2, 7)
    assert reference_lines(ax) == {IDENTITY_GID, ZERO_GID}
    fig.canvas.draw()
    # The identity line maps x to x in data coordinates, whatever the limits.
    xy = ident.get_transform().transform([[0, 0], [1, 1]])
    data = ax.transData.inverted().transform(xy)
    assert data[0, 0] == pytest.approx(data[0, 1]) and data[1, 0] == pytest.approx(data[1, 1])
    assert np.allclose(zero.get_ydata(), 0.0)


def test_save_figure_writes_every_format_and_no_temporary(tmp_path):
    fig, (ax,) = common.panel_grid(1)
    ax.plot([0, 1], [0, 1])
    pdf, png = tmp_path / "f.pdf", tmp_path / "sub" / "f.png"
    common.save_figure(fig, pdf, png)
    assert pdf.read_bytes()[:4] == b"%PDF"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert sorted(p.name for p in tmp_path.rglob("*") if p.is_file()) == ["f.pdf", "f.png"]


DRAW_AND_SAVE = """
import sys
from selfrepair.plots import common
fig, (ax,) = common.panel_grid(1)
ax.plot([0, 1], [0, 1], label="a line")
ax.set_title("a title")
ax.legend()
common.save_figure(fig, *sys.argv[1:])
"""


def test_saved_figures_are_undated_and_identical_across_processes(tmp_path):
    """Two processes drawing the same figure write the same bytes (no creation date)."""
    names = ("f.pdf", "f.png", "f.svg")
    for run in ("a", "b"):
        (tmp_path / run).mkdir()
        paths = [str(tmp_path / run / n) for n in names]
        subprocess.run([sys.executable, "-c", DRAW_AND_SAVE, *paths], check=True, timeout=120)
    for name in names:
        a, b = (tmp_path / "a" / name).read_bytes(), (tmp_path / "b" / name).read_bytes()
        assert a == b, name
    pdf = (tmp_path / "a" / "f.pdf").read_bytes()
    assert b"/CreationDate" not in pdf and b"/Producer" in pdf
    assert b"<dc:date>" not in (tmp_path / "a" / "f.svg").read_bytes()


def test_save_figure_leaves_old_file_when_rendering_fails(tmp_path, monkeypatch):
    fig, _ = common.panel_grid(1)
    png = tmp_path / "f.png"
    png.write_bytes(b"old")

    def broken(path, **kwargs):
        open(path, "wb").write(b"partial")
        raise RuntimeError("renderer died")

    monkeypatch.setattr(fig, "savefig", broken)
    with pytest.raises(RuntimeError):
        common.save_figure(fig, png)
    assert png.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["f.png"]


# --- figures ---------------------------------------------------------------------------------


def test_fig01_one_panel_per_model_with_heads_and_layer_means(summaries):
    fig = self_repair_per_head(summaries)
    axes = panels(fig)
    assert [ax.get_title() for ax in axes] == ["model-a", "model-b"]
    assert "(logits)" in axes[0].get_ylabel()
    assert all(ax.get_xlabel() == "layer / number of layers" for ax in axes)
    for ax, summary in zip(axes, summaries.values(), strict=True):
        assert ZERO_GID in reference_lines(ax)
        dots = ax.collections[0].get_offsets()
        n_layers = summary.sizes["layer"]
        assert len(dots) == summary.top_self_repair.size
        np.testing.assert_allclose(
            np.sort(dots[:, 1]), np.sort(summary.top_self_repair.values.ravel()), rtol=1e-6
        )
        assert set(np.round(dots[:, 0] * n_layers, 6)) == set(range(n_layers))
        (mean_line,) = [line for line in ax.get_lines() if line.get_gid() is None]
        np.testing.assert_allclose(
            mean_line.get_ydata(), summary.top_self_repair.mean("head").values, rtol=1e-6
        )
    # Shared y scale across models.
    assert axes[0].get_ylim() == axes[1].get_ylim()


def test_fig01_interval_bars_span_the_given_bounds(summaries):
    intervals = {
        m: xr.concat([s.top_self_repair - 0.1, s.top_self_repair + 0.2], dim="bound").assign_coords(
            bound=["low", "high"]
        )
        for m, s in summaries.items()
    }
    for da in intervals.values():
        da.attrs["level"] = 0.9
    fig = self_repair_per_head(summaries, intervals)
    ax = panels(fig)[0]
    (bars,) = [c for c in ax.collections if isinstance(c, LineCollection)]
    segments = np.array(bars.get_segments())  # [head, 2 ends, (x, y)]
    values = summaries["model-a"].top_self_repair.values.ravel()
    np.testing.assert_allclose(np.sort(segments[:, 0, 1]), np.sort(values - 0.1), rtol=1e-6)
    np.testing.assert_allclose(np.sort(segments[:, 1, 1]), np.sort(values + 0.2), rtol=1e-6)
    labels = ax.get_legend_handles_labels()[1]
    assert "90% bootstrap interval" in labels


def drops_of(summaries):
    return {m: head_effect_drops(s) for m, s in summaries.items()}


def test_fig02_heads_on_drop_axes_with_both_references(summaries):
    drops = drops_of(summaries)
    fig = heads_de_vs_logit_drop({"model-a": drops["model-a"]})
    (ax,) = panels(fig)
    assert ax.get_title() == "model-a"
    assert "(logits)" in ax.get_xlabel() and "(logits)" in ax.get_ylabel()
    assert reference_lines(ax) == {IDENTITY_GID, ZERO_GID}
    dots = ax.collections[0].get_offsets()
    np.testing.assert_allclose(dots[:, 0], drops["model-a"].de_drop.values.ravel(), rtol=1e-6)
    np.testing.assert_allclose(dots[:, 1], drops["model-a"].logit_drop.values.ravel(), rtol=1e-6)
    assert len(fig.axes) == 2  # the panel and the layer colour bar
    # y = x is the diagonal: equal ranges on both axes.
    assert ax.get_xlim() == ax.get_ylim()


def test_fig21_24_one_panel_per_other_model_and_two_idealised(summaries):
    drops = drops_of(summaries)
    fig = heads_de_vs_logit_drop(drops, shown=["model-b"], idealised_from="model-a")
    axes = panels(fig)
    assert len(axes) == 3
    assert axes[0].get_title() == "model-b"
    assert axes[1].get_title().startswith(IDEAL_TITLES[0]) and "model-a" in axes[1].get_title()
    no_repair = axes[1].collections[0].get_offsets()
    full_repair = axes[2].collections[0].get_offsets()
    np.testing.assert_allclose(no_repair[:, 1], no_repair[:, 0])
    np.testing.assert_allclose(full_repair[:, 1], 0.0)
    np.testing.assert_allclose(full_repair[:, 0], drops["model-a"].de_drop.values.ravel())
    assert all(reference_lines(ax) == {IDENTITY_GID, ZERO_GID} for ax in axes)
    with pytest.raises(ValueError, match="nothing to draw"):
        heads_de_vs_logit_drop(drops, shown=[])


@pytest.fixture(scope="module")
def tokens():
    return head_tokens(token_data(3, 2), [(2, 1), (0, 0), (1, 1)])


def test_fig03_one_panel_per_head_with_every_token(tokens):
    fig = tokens_de_vs_logit_drop(tokens, "model-a")
    axes = panels(fig)
    assert [ax.get_title() for ax in axes] == ["model-a L2H1", "model-a L0H0", "model-a L1H1"]
    for ax, name in zip(axes, ["L2H1", "L0H0", "L1H1"], strict=True):
        assert "(logits)" in ax.get_xlabel() and "(logits)" in ax.get_ylabel()
        assert reference_lines(ax) == {IDENTITY_GID, ZERO_GID}
        dots = ax.collections[0].get_offsets()
        np.testing.assert_allclose(dots[:, 0], tokens.de_drop.sel(head_name=name), rtol=1e-6)
        np.testing.assert_allclose(dots[:, 1], tokens.logit_drop.sel(head_name=name), rtol=1e-6)


def test_fig05_one_panel_per_ablation_on_shared_axes(tokens):
    by_ablation = {a: tokens.isel(head_name=i) for i, a in enumerate(["resample", "mean", "zero"])}
    fig = tokens_by_ablation(by_ablation, "model-a L2H1")
    axes = panels(fig)
    assert [ax.get_title() for ax in axes] == [
        f"model-a L2H1, {a} ablation" for a in ("resample", "mean", "zero")
    ]
    assert len({ax.get_xlim() for ax in axes}) == 1 and len({ax.get_ylim() for ax in axes}) == 1
    assert "(logits)" in axes[0].get_ylabel() and all("(logits)" in a.get_xlabel() for a in axes)
    assert all(reference_lines(ax) == {IDENTITY_GID, ZERO_GID} for ax in axes)
    colours = [tuple(ax.collections[0].get_facecolor()[0][:3]) for ax in axes]
    assert len(set(colours)) == 3


def test_fig06_clipped_share_on_a_unit_scale(summaries):
    fig = ln_share_per_head(summaries)
    axes = panels(fig)
    assert [ax.get_title() for ax in axes] == ["model-a", "model-b"]
    assert "LayerNorm share" in axes[0].get_ylabel() and "clipped" in axes[0].get_ylabel()
    assert axes[0].get_ylim() == (-0.05, 1.05)
    dots = axes[1].collections[0].get_offsets()
    np.testing.assert_allclose(
        np.sort(dots[:, 1]), np.sort(summaries["model-b"].top_ln_share_clipped.values.ravel())
    )


def test_fig11_clipped_beside_unclipped_for_each_model(summaries):
    fig = ln_share_clipped_and_unclipped(summaries)
    axes = panels(fig)
    assert [ax.get_title() for ax in axes] == [
        "model-a: clipped to [0, 1]",
        "model-a: unclipped",
        "model-b: clipped to [0, 1]",
        "model-b: unclipped",
    ]
    dots = axes[3].collections[0].get_offsets()
    np.testing.assert_allclose(
        np.sort(dots[:, 1]), np.sort(summaries["model-b"].top_ln_share.values.ravel())
    )
    assert axes[2].get_xlabel() == axes[3].get_xlabel() == "layer / number of layers"


def test_frozen_ln_figure_draws_the_three_treatments_per_model(summaries):
    layers = {m: frozen_ln_layers(s, s) for m, s in summaries.items()}
    fig = frozen_ln_self_repair(layers)
    axes = panels(fig)
    assert [ax.get_title() for ax in axes] == ["model-a", "model-b"]
    assert "(logits)" in axes[0].get_ylabel()
    for ax, (model, data) in zip(axes, layers.items(), strict=True):
        assert ZERO_GID in reference_lines(ax)
        lines = [line for line in ax.get_lines() if line.get_gid() is None]
        assert len(lines) == 3
        for line, variant in zip(lines, data.variant.values, strict=True):
            np.testing.assert_allclose(line.get_ydata(), data.sel(variant=variant).values)
            assert list(line.get_xdata()) == list(range(summaries[model].sizes["layer"]))
    labels = sorted(t.get_text() for t in fig.legends[0].get_texts())
    assert labels == sorted(FROZEN_LN_VARIANTS)


def test_plots_only_draw_and_the_stages_open_the_stores():
    """No module of selfrepair.plots imports selfrepair.stages or zarr: opening and checking
    stores is selfrepair.stages.figures' job, drawing is plots'."""
    for path in sorted(Path(common.__file__).parent.glob("*.py")):
        imported = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                imported.update(alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom):
                imported.add(node.module or "")
        assert not {m for m in imported if m.startswith(("selfrepair.stages", "zarr"))}, path


def _shares(n_layers: int, n_heads: int, measured: list[tuple[int, int]]) -> xr.DataArray:
    from selfrepair.variables import component_names

    names = component_names(n_layers, n_heads)
    values = np.full((n_layers, n_heads, len(names)), np.nan)
    for i, (layer, head) in enumerate(measured):
        values[layer, head, -1] = 0.1 * (i + 1)  # LN reads every head
    return xr.DataArray(values, dims=("layer", "head", "component"), coords={"component": names})


def test_repair_heatmap_draws_the_measured_heads_only():
    """A heads subset (paper-ci, a task's heads) gets one row per measured head, its layer
    boundaries between them; every head measured keeps every row."""
    from selfrepair.plots.repair import repair_heatmap

    measured = [(0, 1), (2, 0), (2, 1)]
    fig = repair_heatmap({"m": _shares(3, 2, measured)})
    ax = fig.axes[0]
    assert ax.images[0].get_array().shape == (3, 3 * 2 + 3 + 1)
    assert [t.get_text() for t in ax.get_yticklabels()] == ["L0H1", "L2H0", "L2H1"]
    rows = [line.get_ydata()[0] for line in ax.lines if line.get_ydata()[0] == line.get_ydata()[1]]
    assert rows == [0.5]  # one boundary: between layer 0's row and layer 2's
    everything = [(layer, head) for layer in range(3) for head in range(2)]
    fig = repair_heatmap({"m": _shares(3, 2, everything)})
    assert fig.axes[0].images[0].get_array().shape[0] == 6
    assert len(fig.axes[0].get_yticklabels()) == 6
