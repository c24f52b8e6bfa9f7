"""Mean ablation through the workflow: the shared reduced demo run's mean-ablation stores (a text
shard of each model, and a task's) hold the direct effect of the head's mean z where that mean is
taken, by hand, over exactly the positions the measured pass reads: every row's tokens but the
last (a target only), and in a task the positions that predict a real token. TransformerLens'
own forward pass and hooks only; no engine code."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import xarray as xr

from selfrepair.analysis.shards import stored_values
from selfrepair.models.loading import load_model
from selfrepair.reference.heads import frozen_ln_direct_effect

pytestmark = pytest.mark.slow

MODELS = ("tiny-gpt2", "tiny-pythia")
SHARD = "000"


def demo_model(run, name: str):
    return load_model(name, path=str(run / "resources" / "models" / name))


def z_means(caches: list[dict], n_layers: int, first: int) -> dict[int, torch.Tensor]:
    """Per layer the mean z ([head, d_head]) over every position from `first` on of the
    caches' rows, float64."""
    out = {}
    for layer in range(n_layers):
        name = f"blocks.{layer}.attn.hook_z"
        out[layer] = torch.cat([c[name][:, first:].flatten(0, 1) for c in caches]).double().mean(0)
    return out


def mean_de(model, z_mean, layer, head, scale, targets) -> np.ndarray:
    """The direct effect of the head's output at its mean z, on every token (frozen final norm)."""
    vec = (z_mean[layer][head] @ model.W_O[layer, head].double()).expand(*targets.shape, -1)
    return frozen_ln_direct_effect(model, vec, scale, targets).numpy()


def worst_error(model, z_mean, got_of, scale, targets) -> float:
    """The largest error over heads of the stored de_ablated (got_of(layer, head), NaN where
    not kept) against mean_de, relative to its size."""
    worst = 0.0
    for layer in range(model.cfg.n_layers):
        for head in range(model.cfg.n_heads):
            got = got_of(layer, head)
            kept = np.isfinite(got)
            assert kept.any(), (layer, head)
            expected = mean_de(model, z_mean, layer, head, scale, targets)[kept]
            err = np.abs(got[kept] - expected).max() / (1e-3 + np.abs(expected).max())
            worst = max(worst, float(err))
    return worst


@pytest.mark.parametrize("name", MODELS)
@torch.no_grad()
def test_text_mean_ablation_averages_the_positions_the_pass_reads(finished_run, name):
    run, _ = finished_run
    results = run / "results" / name
    ds = xr.open_zarr(results / "ablation" / "mean" / f"shard-{SHARD}.zarr")
    first = 0 if int(ds.attrs["mean_include_bos"]) else 1
    rows = xr.open_zarr(results / "tokens.zarr").tokens.isel(row=ds["batch"].values).values
    rows = torch.from_numpy(rows.astype(np.int64))
    model = demo_model(run, name)
    _, read = model.run_with_cache(rows[:, :-1])
    _, whole = model.run_with_cache(rows)  # the last token too: the convention left behind
    scale, targets = read["ln_final.hook_scale"][..., 0], rows[:, 1:]
    n_layers = model.cfg.n_layers
    err = worst_error(
        model, z_means([read], n_layers, first), lambda la, h: stored_values(ds, "de_ablated", la, h),
        scale, targets,
    )  # fmt: skip
    off = worst_error(
        model, z_means([whole], n_layers, first), lambda la, h: stored_values(ds, "de_ablated", la, h),
        scale, targets,
    )  # fmt: skip
    print(f"{name}: off by {err:.2g} (relative); a mean over whole rows would be {off:.2g} off")
    assert err < 1e-4
    assert off > 1e-3  # the check tells the two means apart


@torch.no_grad()
def test_task_mean_ablation_averages_the_positions_that_predict_a_real_token(finished_run):
    run, _ = finished_run
    task = run / "results" / MODELS[0] / "tasks" / "induction"
    ds = xr.open_zarr(task / "ablation" / "mean.zarr")
    assert ds.attrs["metric"] == "correct_logit"
    first = 0 if int(ds.attrs["mean_include_bos"]) else 1
    prompts = xr.open_zarr(task / "prompts.zarr")
    rows = torch.from_numpy(prompts.tokens.values.astype(np.int64))
    lengths = prompts.length.values
    model = demo_model(run, MODELS[0])
    # Each prompt alone, its padding cut: the positions before its last real token.
    read = [model.run_with_cache(rows[i : i + 1, : n - 1])[1] for i, n in enumerate(lengths)]
    whole = [model.run_with_cache(rows[i : i + 1, :n])[1] for i, n in enumerate(lengths)]
    _, cache = model.run_with_cache(rows[:, :-1])
    prompt, position = ds.prompt.values, ds.position.values
    scale = cache["ln_final.hook_scale"][prompt, position, 0][None]
    targets = rows[prompt, position + 1][None]

    def got_of(layer, head):
        return ds.de_ablated.sel(layer=layer, head=head).values[None]

    n_layers = model.cfg.n_layers
    err = worst_error(model, z_means(read, n_layers, first), got_of, scale, targets)
    off = worst_error(model, z_means(whole, n_layers, first), got_of, scale, targets)
    print(f"induction: off by {err:.2g} (relative); with the answers' positions {off:.2g} off")
    assert err < 1e-4
    assert off > 1e-3
