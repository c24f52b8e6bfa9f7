"""Reductions of the mechanism experiments (numpy and xarray only, no torch: they run in the
analysis environment).

- neuron_reductions (Figs 7, 8, 15): on each head's selected tokens, with neurons ranked per
  token by self-repair (ablated - clean DE, best first):
  repair_fraction   share of tokens where the k-th ranked neuron repairs >= t x the head's DE;
  cumulative_abs_share  mean over tokens of the share of sum |self-repair| of all neurons
                    held by the k best (tokens where nothing changed are skipped, and counted);
  rank_median_clean_de  median clean DE of the k-th ranked neuron (Fig 15's colour);
  top_n_frequency   per neuron, the share of tokens where it is among the top_n ranked;
  median_clean_de   per neuron, its median clean DE (anti-erasure neurons are negative);
  top_neuron_*      the best neuron of each token: index, clean and ablated DE (Fig 7).
- ratio_shares (Fig 4, 16-18): share of tokens with a ratio above 1.
- classify_reinforcement (Figs 9, 19): per head and scale the least-squares slope of the new DE
  on the clean DE; the change slope (slope - 1) is negative for a head that represses itself.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import xarray as xr

__all__ = [
    "REINFORCEMENT_CLASSES",
    "THRESHOLDS",
    "at_selected",
    "check_top_n",
    "classify_reinforcement",
    "least_squares_slope",
    "neuron_reductions",
    "ratio_shares",
]

THRESHOLDS = (0.5, 0.1, 0.05, 0.02, 0.01)
REINFORCEMENT_CLASSES = ("self-repressing", "self-reinforcing", "mixed")


def at_selected(ds: xr.Dataset, name: str) -> xr.DataArray:
    """A per-token variable (head, batch, pos) read at each head's selected tokens, given by
    token_row (a value of the batch coordinate) and token_pos: dims (head, selection, token)."""
    rows = {int(r): i for i, r in enumerate(ds.batch.values)}
    values = ds[name].values
    out = np.empty(ds.token_row.shape, values.dtype)
    for i in range(ds.sizes["head"]):
        row_idx = np.vectorize(rows.__getitem__, otypes=[np.int64])(ds.token_row.values[i])
        out[i] = values[i, row_idx, ds.token_pos.values[i]]
    return ds.token_row.copy(data=out).rename(name)


def _neuron_stats(
    clean: np.ndarray, ablated: np.ndarray, head_de: np.ndarray, thresholds, top_n: int
) -> dict[str, np.ndarray]:
    """clean, ablated: [token, neuron] DEs; head_de: [token]."""
    n_tok, d_mlp = clean.shape
    delta = ablated.astype(np.float64) - clean
    order = np.argsort(-delta, axis=1, kind="stable")  # best repairing neuron first
    ranked = np.take_along_axis(delta, order, 1)
    repair_fraction = np.stack(
        [(ranked >= t * head_de[:, None]).mean(0) for t in thresholds], -1
    )  # [rank, threshold]
    abs_ranked = np.abs(ranked)
    total = abs_ranked.sum(1)
    changed = total > 0
    cumulative = np.cumsum(abs_ranked[changed], 1) / total[changed, None]
    cumulative_share = cumulative.mean(0) if changed.any() else np.full(d_mlp, np.nan)  # [rank]
    top = order[:, :top_n]
    rows = np.arange(n_tok)
    return {
        "repair_fraction": repair_fraction,
        "cumulative_abs_share": cumulative_share,
        "rank_median_clean_de": np.median(np.take_along_axis(clean, order, 1), 0),
        "top_n_frequency": np.bincount(top.ravel(), minlength=d_mlp) / n_tok,
        "median_clean_de": np.median(clean, 0),
        "top_neuron": order[:, 0],
        "top_neuron_de_clean": clean[rows, order[:, 0]],
        "top_neuron_de_ablated": ablated[rows, order[:, 0]],
        "n_unchanged": np.int64((~changed).sum()),
    }


def check_top_n(top_n: int, d_mlp: int) -> None:
    """Refuse a top_n the layer's d_mlp neurons cannot fill (neuron_reductions' top_n_frequency)."""
    if not 1 <= top_n <= d_mlp:
        raise ValueError(f"top_n must lie in [1, {d_mlp}] (the layer's neurons), got {top_n}")


def neuron_reductions(
    ds: xr.Dataset, thresholds: Sequence[float] = THRESHOLDS, top_n: int = 10
) -> xr.Dataset:
    """The reductions above for every head and selection of a select_neuron_tokens dataset.
    Ranks count from 1."""
    thresholds = [float(t) for t in thresholds]
    d_mlp = ds.sizes["neuron"]
    check_top_n(top_n, d_mlp)
    head_de = at_selected(ds, "de_clean")
    stats = [
        [
            _neuron_stats(
                ds.neuron_de_clean.values[i, j].astype(np.float64),
                ds.neuron_de_ablated.values[i, j].astype(np.float64),
                head_de.values[i, j].astype(np.float64),
                thresholds,
                top_n,
            )
            for j in range(ds.sizes["selection"])
        ]
        for i in range(ds.sizes["head"])
    ]

    def stacked(name):
        return np.stack([np.stack([s[name] for s in row]) for row in stats])

    hs = ("head", "selection")
    data = {
        "repair_fraction": ((*hs, "rank", "threshold"), stacked("repair_fraction")),
        "cumulative_abs_share": ((*hs, "rank"), stacked("cumulative_abs_share")),
        "rank_median_clean_de": ((*hs, "rank"), stacked("rank_median_clean_de")),
        "top_n_frequency": ((*hs, "neuron"), stacked("top_n_frequency")),
        "median_clean_de": ((*hs, "neuron"), stacked("median_clean_de")),
        "top_neuron": ((*hs, "token"), stacked("top_neuron")),
        "top_neuron_de_clean": ((*hs, "token"), stacked("top_neuron_de_clean")),
        "top_neuron_de_ablated": ((*hs, "token"), stacked("top_neuron_de_ablated")),
        "n_unchanged": (hs, stacked("n_unchanged")),
        "head_de_clean": ((*hs, "token"), head_de.values),
        "mlp_de_clean": ((*hs, "token"), at_selected(ds, "mlp_de_clean").values),
        "mlp_de_ablated": ((*hs, "token"), at_selected(ds, "mlp_de_ablated").values),
    }
    out = xr.Dataset(
        data,
        coords={
            **{c: ds[c] for c in ("head", "head_layer", "head_index", "mlp_layer", "selection")},
            "token": ds.token,
            "neuron": ds.neuron,
            "rank": np.arange(1, d_mlp + 1),
            "threshold": thresholds,
        },
    )
    out["max_top_n_frequency"] = out.top_n_frequency.max("neuron")
    for name, da in out.data_vars.items():
        if da.dtype == np.float64:
            out[name] = da.astype(np.float32)
    out.attrs.update(ds.attrs)
    out.attrs.update(top_n=top_n)
    return out


def ratio_shares(ratio: xr.DataArray, mask: xr.DataArray | None = None) -> xr.DataArray:
    """Share of tokens (batch, pos; only where mask) whose ratio is above 1."""
    above = ratio > 1
    if mask is None:
        return above.mean(("batch", "pos"))
    return above.where(mask).sum(("batch", "pos")) / mask.sum(("batch", "pos"))


def least_squares_slope(x: np.ndarray, y: np.ndarray) -> float:
    """Slope of the least-squares line of y on x (with intercept)."""
    x = x - x.mean()
    var = float((x * x).sum())
    return float((x * (y - y.mean())).sum() / var) if var > 0 else float("nan")


def classify_reinforcement(ds: xr.Dataset) -> xr.Dataset:
    """Per (head, scale): slope of de_new on de_clean over tokens, its change slope (slope - 1)
    and the mean change; per head: the trend of the change slope with the scale (least squares
    through the origin, since scale 0 changes nothing) and the class: self-repressing when the
    change slope is negative at every scale and falls with it, self-reinforcing when positive
    and rising, else mixed."""
    scales = ds["scale"].values.astype(np.float64)
    slope = np.full((ds.sizes["head"], len(scales)), np.nan)
    for i in range(ds.sizes["head"]):
        x = ds.de_clean.values[i].ravel().astype(np.float64)
        for j in range(len(scales)):
            slope[i, j] = least_squares_slope(x, ds.de_new.values[i, j].ravel().astype(np.float64))
    change = slope - 1
    trend = (change * scales).sum(1) / (scales * scales).sum()
    classes = np.where(
        (change < 0).all(1) & (trend < 0),
        REINFORCEMENT_CLASSES[0],
        np.where(
            (change > 0).all(1) & (trend > 0), REINFORCEMENT_CLASSES[1], REINFORCEMENT_CLASSES[2]
        ),
    )
    mean_change = (ds.de_new - ds.de_clean).mean(("batch", "pos"))
    return xr.Dataset(
        {
            "slope": (("head", "scale"), slope.astype(np.float32)),
            "change_slope": (("head", "scale"), change.astype(np.float32)),
            "mean_change": mean_change.astype(np.float32),
            "trend": ("head", trend.astype(np.float32)),
            "classification": ("head", classes.astype(str)),
        },
        coords={"head": ds["head"], "scale": ds["scale"]},
    )
