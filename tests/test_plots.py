"""Plotting conventions and figures: each function returns a Figure with the expected panels,
titles, labels (in logits) and reference lines; saving is atomic."""

from __future__ import annotations

import numpy as np
import pytest
import xarray as xr
from matplotlib.figure import Figure

from selfrepair.plots import common
from selfrepair.plots.common import IDENTITY_GID, ZERO_GID, reference_lines
from selfrepair.plots.per_head import self_repair_per_head
from selfrepair.reduce import head_summary
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
