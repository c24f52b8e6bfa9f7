"""engine.store_tokens through the workflow: the shared reduced demo run (`top`, the default)
is copied and one model's ablation stores are made again under `all`; every store and page read
from them must be the same file, and the values a `top` store keeps must be the same bits as the
same tokens' values under `all`. The neuron stage reruns too (store_tokens is its param): its
selected.zarr keeps every neuron's direct effects only under `all`, its reductions are the same."""

from __future__ import annotations

import importlib.util
import shutil

import numpy as np
import pytest
import xarray as xr
from helpers import ROOT, link_project, snakemake

from selfrepair.variables import CLEAN_SUMMED, HEAD_VARIABLES

pytestmark = pytest.mark.slow

spec = importlib.util.spec_from_file_location("compare_runs", ROOT / "tools" / "compare_runs.py")
compare_runs = importlib.util.module_from_spec(spec)
spec.loader.exec_module(compare_runs)

MODEL = "tiny-gpt2"
# The reduced demo measures training checkpoints on the first shard, which therefore keeps every
# token under `top` too (the training figure reads it); the second is `top`.
SHARD = "001"
ABLATIONS = ("resample", "mean", "zero", "resample-frozen-ln")


def targets() -> list[str]:
    out = [
        f"results/{MODEL}/{kind}/{a}.zarr" for kind in ("summary", "intervals") for a in ABLATIONS
    ]
    out += [f"results/{MODEL}/{kind}/{a}.zarr" for kind in ("atp", "norms") for a in ABLATIONS[:3]]
    out += [f"results/{MODEL}/neurons/reductions.zarr"]  # Fig 8's substitute
    return out + [f"results/explorer/{MODEL}.html"]


@pytest.fixture(scope="module")
def both(finished_run, tmp_path_factory):
    """(the finished run, a copy with MODEL's ablation stores and their readers made again
    under engine.store_tokens: all)."""
    run, configs = finished_run
    copy = link_project(tmp_path_factory.mktemp("store-all"))
    for name in ("results", "resources", ".snakemake"):
        shutil.copytree(run / name, copy / name, symlinks=True)
    proc = snakemake(
        *targets(), "--cores", "2", "--configfile", *configs,
        "--config", 'engine={"store_tokens": "all"}',
        cwd=copy, timeout=1800,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-4000:]
    return run, copy


def test_the_runs_kept_the_layouts_asked_for(both):
    top, every = both
    for run, layout in ((top, "top"), (every, "all")):
        ds = xr.open_zarr(run / f"results/{MODEL}/ablation/resample/shard-{SHARD}.zarr")
        assert ds.attrs.get("store_tokens", "all") == layout
        assert ("de_clean" in ds) == (layout == "all")
        clean = xr.open_zarr(run / f"results/{MODEL}/clean/shard-{SHARD}.zarr")
        assert ("de_head" in clean) == (layout == "all")
        assert ("top_candidate_de_head" in clean) == (layout == "top")
        neurons = xr.open_zarr(run / f"results/{MODEL}/neurons/selected.zarr")
        assert {"token_row", "token_pos", "score", "mlp_de_ablated"} <= set(neurons.data_vars)
        per_neuron = {"neuron_de_clean", "neuron_de_ablated"}
        assert per_neuron & set(neurons.data_vars) == (per_neuron if layout == "all" else set())


def test_top_clean_stores_keep_the_same_bits_as_every_token(both):
    """Each head's candidates in a `top` clean store are its best tokens of the shard, with the
    same values as the `all` store's de_head there."""
    top, every = both
    for shard in ("000", SHARD):
        rel = f"results/{MODEL}/clean/shard-{shard}.zarr"
        kept, full = xr.open_zarr(top / rel).load(), xr.open_zarr(every / rel).load()
        flat = full.de_head.transpose("layer", "head", "batch", "pos").values
        flat = flat.reshape(*flat.shape[:2], -1)
        local = kept.top_candidate_token.values - int(full.batch[0]) * full.sizes["pos"]
        got = kept.top_candidate_de_head.values
        np.testing.assert_array_equal(got, np.take_along_axis(flat, local, -1))
        for layer, head in np.ndindex(got.shape[:2]):  # the best of the shard
            rest = np.delete(flat[layer, head], local[layer, head])
            assert rest.size == 0 or got[layer, head].min() >= rest.max()
        for name, dims in CLEAN_SUMMED.items():
            np.testing.assert_array_equal(kept[f"{name}_sum"], full[name].sum(dims))


def test_every_store_and_page_read_from_either_layout_is_the_same_file(both):
    top, every = both
    kinds = ("summary", "intervals", "atp", "norms", "attribution")  # attribution: top tokens
    folders = [f"{MODEL}/{kind}" for kind in kinds] + [f"{MODEL}/neurons/reductions.zarr"]
    problems = compare_runs.compare_runs(
        top / "results", every / "results", [*folders, "explorer"], ()
    )
    assert problems == []


def test_top_stores_keep_the_same_bits_as_every_token(both):
    """Each head's top tokens and its kept heads' every token, against the `all` store."""
    top, every = both
    for ablation in ABLATIONS:
        for shard in (SHARD,):
            rel = f"results/{MODEL}/ablation/{ablation}/shard-{shard}.zarr"
            kept = xr.open_zarr(top / rel).load()
            full = xr.open_zarr(every / rel).load()
            n_pos = full.sizes["pos"]
            start = int(full.batch[0]) * n_pos
            token = kept.top_token.values
            assert (token >= 0).any()
            for name in HEAD_VARIABLES:
                flat = full[name].values.reshape(*full[name].shape[:2], -1)
                local = np.where(token >= 0, token - start, 0)
                want = np.take_along_axis(flat, local, -1)
                got = kept[f"top_{name}"].values
                np.testing.assert_array_equal(got[token >= 0], want[token >= 0])
                for i in range(kept.sizes.get("kept", 0)):
                    layer, head = int(kept.kept_layer[i]), int(kept.kept_head[i])
                    np.testing.assert_array_equal(
                        kept[f"kept_{name}"].values[i], full[name].values[layer, head]
                    )
            # Fig 16-18's picked heads, in the variants the norms read (not the frozen one)
            assert (kept.sizes.get("kept", 0) >= 1) == (not ablation.endswith("frozen-ln"))
