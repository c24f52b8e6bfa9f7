"""The atp stages (stages.atp) on a tiny random model and one token shard, after the real
clean_cache, head_top_tokens, ablate and summarize_heads stages: with a model entry's `heads`,
the per-head backward passes on the top tokens run for those heads only and give the every-head
run's numbers, and atp_summary judges those heads against their exact effects; one job of two
kinds writes each kind's store as its own job would."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import xarray as xr

import selfrepair.stages.job as job
from selfrepair.analysis.attribution import shard_top_mask
from selfrepair.models.builders import random_model
from selfrepair.reference.atp import reference_atp
from selfrepair.stages.ablation import ablate
from selfrepair.stages.atp import atp, atp_summary, measured_heads
from selfrepair.stages.clean import clean_cache
from selfrepair.stages.job import ModelJob
from selfrepair.stages.repair import head_top_tokens
from selfrepair.stages.store import open_zarr, write_zarr
from selfrepair.stages.summaries import summarize_heads

ROWS, SEQ, FRACTION = 8, 13, 0.125  # 96 predicted tokens: 12 top tokens per head
HEADS = [[1, 2], [0, 1], [2, 3]]
ATTRS = {"model": "m"}
TOL = 1e-4  # logits, as tests/test_atp.py: the engine and the reference agree to about 1e-5


@pytest.fixture(scope="module")
def stores(tmp_path_factory):
    """Per entry ("every": no `heads`; "listed": HEADS): the atp shard, and atp_summary's
    result for the listed entry."""
    tmp = tmp_path_factory.mktemp("atp-stage")
    model = random_model("gpt2")
    patch = pytest.MonkeyPatch()
    patch.setattr(job, "model_for", lambda *a, **k: model)
    gen = torch.Generator().manual_seed(3)
    rows = torch.randint(1, model.cfg.d_vocab, (ROWS, SEQ), generator=gen)
    rows[:, 0] = 0
    tokens = str(tmp / "tokens.zarr")
    write_zarr(xr.Dataset({"tokens": (("row", "tok"), rows.numpy().astype(np.int32))}), tokens)
    p = {name: str(tmp / f"{name}.zarr") for name in ("clean", "top", "ablation", "summary")}
    every = ModelJob(tokens, {"name": "m"}, batch_size=4, shards=(0, ROWS))
    listed = ModelJob(tokens, {"name": "m", "heads": HEADS}, batch_size=4, shards=(0, ROWS))
    clean_cache(every, out=p["clean"], attrs=ATTRS)
    head_top_tokens(shards=[p["clean"]], top_fraction=FRACTION, out=p["top"], attrs=ATTRS)
    ablate(listed, ablation="resample", heads_per_pass=4, mean_include_bos=True,
           out=p["ablation"], attrs=ATTRS)  # fmt: skip
    summarize_heads(shards=[p["ablation"]], top_tokens=p["top"], top_fraction=FRACTION,
                    de_epsilon=0.01,
                    n_resamples=20, level=0.9, seed=0, out=p["summary"],
                    intervals_out=str(tmp / "intervals.zarr"), attrs=ATTRS)  # fmt: skip
    out = {}
    for name, one in (("every", every), ("listed", listed)):
        path = str(tmp / f"atp-{name}.zarr")
        atp(one, ablations=["resample"], mean_include_bos=True, top_tokens=p["top"], out=[path],
            attrs=ATTRS)  # fmt: skip
        out[name] = open_zarr(path).load()
    both = [str(tmp / f"atp-both-{kind}.zarr") for kind in ("mean", "resample")]
    atp(every, ablations=["mean", "resample"], mean_include_bos=True, top_tokens=p["top"],
        out=both, attrs=ATTRS)  # fmt: skip
    out["both"] = {
        kind: open_zarr(path).load() for kind, path in zip(("mean", "resample"), both, strict=True)
    }
    with pytest.raises(ValueError, match="one store per kind"):
        atp(every, ablations=["mean", "resample"], mean_include_bos=True, top_tokens=p["top"],
            out=both[:1], attrs=ATTRS)  # fmt: skip
    out["summary"] = atp_summary(atp_shards=[str(tmp / "atp-listed.zarr")],
                                 ablation_shards=[p["ablation"]], summary=p["summary"],
                                 top_tokens=p["top"], top_k=5, out=str(tmp / "judged.zarr"),
                                 attrs=ATTRS)  # fmt: skip
    patch.undo()
    out["model"], out["rows"] = model, rows
    out["top"] = shard_top_mask(open_zarr(p["top"]).token.values, 0, ROWS, SEQ - 1)
    return out, measured_heads(HEADS, (model.cfg.n_layers, model.cfg.n_heads))


def test_a_heads_list_keeps_the_top_token_passes_to_its_heads(stores):
    s, measured = stores
    every, listed = s["every"], s["listed"]
    assert (every.n_top.sum("batch").values == 12).all()
    np.testing.assert_array_equal(listed.n_top.sum("batch").values, np.where(measured, 12, 0))
    for name in ("atp_top", "graddrop_top_combined", "graddrop_top_sum"):
        heads = (Ellipsis, measured) if name.endswith("_sum") else (Ellipsis, measured, slice(None))
        others = (Ellipsis, ~measured, *heads[2:])
        np.testing.assert_array_equal(listed[name].values[heads], every[name].values[heads])
        assert not listed[name].values[others].any()
        assert every[name].values[others].any()  # the others did have estimates
    for name in ("atp_row", "graddrop_row_combined", "graddrop_row_sum", "metric_clean"):
        np.testing.assert_array_equal(listed[name].values, every[name].values)


def test_the_stored_graddrop_is_the_detaching_reference_combined_and_summed(stores):
    """The store's GradDrop against TransformerLens' plain forward with each layer's outputs
    detached (reference.atp), per row and per head's top tokens in it: combined over the
    dropped layers per row ((1 / (L - 1)) sum of |estimate|) and summed over the rows per
    dropped layer; no per-layer rows are kept."""
    s, _ = stores
    model, rows, top, stored = s["model"], s["rows"], s["top"], s["every"]
    n_layers = model.cfg.n_layers
    asked = top.any((0, 1))
    refs = [
        reference_atp(model, rows, "resample", drop_layer=layer, per_token=asked)
        for layer in range(n_layers)
    ]
    per_layer = {
        "row": np.stack([ref["row"] for ref in refs]),
        "top": np.stack([np.where(top, np.nan_to_num(ref["token"]), 0).sum(-1) for ref in refs]),
    }
    assert np.abs(per_layer["row"]).max() > 0.3  # estimates of whole logits, not of noise
    assert "graddrop_row" not in stored and "graddrop_top" not in stored
    for unit, values in per_layer.items():
        combined = np.abs(values).sum(0) / (n_layers - 1)
        got = stored[f"graddrop_{unit}_combined"]
        assert got.dims == ("layer", "head", "batch") and got.dtype == np.float32
        np.testing.assert_allclose(got.values, combined, atol=TOL, rtol=0)
        got = stored[f"graddrop_{unit}_sum"]
        assert got.dims == ("drop_layer", "layer", "head") and got.dtype == np.float64
        np.testing.assert_allclose(got.values, values.sum(-1), atol=ROWS * TOL, rtol=0)


def test_one_job_writes_a_store_per_kind_each_as_its_own_job_would(stores):
    """atp with two kinds writes one store per kind, in their order; the resample one is the
    one-kind job's store, bit for bit, and records its own kind."""
    got = stores[0]
    both, alone = got["both"], got["every"]
    place = "selfrepair_place"  # write_zarr records the store's own name
    assert {k: v for k, v in both["resample"].attrs.items() if k != place} == {
        k: v for k, v in alone.attrs.items() if k != place
    }
    assert both["mean"].attrs["ablation"] == "mean"
    assert set(both["resample"].variables) == set(alone.variables)
    for name in alone.variables:
        assert both["resample"][name].values.tobytes() == alone[name].values.tobytes(), name
    assert not np.array_equal(both["mean"].atp_row.values, alone.atp_row.values)


def test_the_summary_judges_the_listed_heads_only(stores):
    s, measured = stores
    judged = s["summary"]
    for sel in ("all", "top"):
        assert np.array_equal(np.isfinite(judged[f"{sel}_exact"].values), measured), sel
        assert np.isfinite(judged[f"{sel}_atp_error"].values[measured]).all()
        assert not judged[f"{sel}_exact_top_k"].values[~measured].any()
    # k clipped below the 3 heads measured (analysis.atp.top_k_used)
    assert (judged.attrs["top_k"], judged.attrs["top_k_used"]) == (5, 2)
    assert int(judged.top_exact_top_k.sum()) == 2
