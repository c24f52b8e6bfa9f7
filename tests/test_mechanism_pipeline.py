"""The mechanism stages end to end on a tiny random model and a two-shard token store: they
write stores the figure builders read back, and line up with the ablation stage's stores; the
neuron stage's reductions are those the former neuron_reductions rule made of its store."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import xarray as xr
from snakemake.iocontainers import InputFiles, Params

import selfrepair.mechanisms.neurons as neurons
import selfrepair.stages.figures as mechanism_figures
import selfrepair.stages.job as job
import selfrepair.stages.mechanisms as mp
from selfrepair.analysis.mechanisms import neuron_reductions
from selfrepair.mechanisms.neurons import PER_NEURON, neuron_direct_effects, resolve_probes
from selfrepair.models.builders import random_model
from selfrepair.stages.ablation import ablate
from selfrepair.stages.job import ModelJob
from selfrepair.stages.joblog import provenance, revision_of, rule_params
from selfrepair.stages.store import open_zarr, write_zarr

BOUNDS = [(0, 5), (5, 9)]
NEURON_HEADS = [[1, 2], [0, 1]]
NORM_HEADS = [[2, 3], [1, 0]]
NEURONS = dict(thresholds=[0.5, 0.1], top_n=3)


@pytest.fixture(scope="module")
def model():
    return random_model("pythia")


@pytest.fixture(scope="module")
def run(tmp_path_factory, model):
    """Tokens, the ablation stage's shards and every mechanism stage, with the model loader
    replaced by the random model (no hub, no checkpoint)."""
    root = tmp_path_factory.mktemp("mech")
    rows = torch.randint(1, model.cfg.d_vocab, (9, 12), generator=torch.Generator().manual_seed(5))
    rows[:, 0] = 0
    tokens = str(root / "tokens.zarr")
    write_zarr(xr.Dataset({"tokens": (("row", "tok"), rows.numpy().astype(np.int32))}), tokens)
    patch = pytest.MonkeyPatch()
    patch.setattr(job, "model_for", lambda *a, **k: model)
    common = dict(tokens=tokens, entry={"name": "random-pythia"}, checkpoint=None, device="cpu")
    common.update(dtype="float32")
    attrs = {"model": "random-pythia"}
    shards = {}
    for ablation in ("resample", "zero"):
        shards[ablation] = []
        for i, bounds in enumerate(BOUNDS):
            out = str(root / f"ablation-{ablation}-{i}.zarr")
            ablate(
                ModelJob(**common, batch_size=3, shards=bounds),
                ablation=ablation,
                heads_per_pass=4,
                mean_include_bos=True,
                out=out,
                attrs=attrs,
            )
            shards[ablation].append(out)
    paths = {
        "tokens": tokens,
        "shards": shards,
        "selected": str(root / "selected.zarr"),
        "reductions": str(root / "reductions.zarr"),
        "selected_all": str(root / "all" / "selected.zarr"),
        "reductions_all": str(root / "all" / "reductions.zarr"),
        "norms": {a: str(root / f"norms-{a}.zarr") for a in shards},
        "reinforcement": str(root / "reinforcement.zarr"),
    }
    for layout, suffix in (("top", ""), ("all", "_all")):
        mp.neuron_effects(
            ModelJob(**common, batch_size=2, shards=BOUNDS),
            heads=NEURON_HEADS,
            mlp_layer=-1,
            ablation="resample",
            top_fraction=0.1,
            mean_include_bos=True,
            **NEURONS,
            store_tokens=layout,
            out=paths[f"selected{suffix}"],
            reductions_out=paths[f"reductions{suffix}"],
            attrs=attrs,
        )
    for ablation, out in paths["norms"].items():
        mp.norm_ratios(
            ModelJob(**common, batch_size=3, shards=BOUNDS),
            engine_shards=shards[ablation],
            heads=NORM_HEADS,
            ablation=ablation,
            top_fraction=0.1,
            mean_include_bos=True,
            out=out,
            attrs=attrs,
        )
    mp.self_reinforcement(
        ModelJob(**common, batch_size=3),
        heads=[[2, 1]],
        second_half=True,
        scales=[1.0, 2.0],
        rows=4,
        seq_len=7,
        out=paths["reinforcement"],
        attrs=attrs,
    )
    yield paths, rows
    patch.undo()


def test_neuron_store_holds_the_top_tokens_of_the_whole_run(run, model):
    paths, rows = run
    ds = open_zarr(paths["selected"]).load()
    assert ds.attrs["model"] == "random-pythia" and ds.attrs["neuron_sum_max_error"] < 1e-5
    assert ds.sizes["token"] == int(np.ceil(0.1 * 9 * 11))
    assert ds.batch.values.tolist() == list(range(9))
    # Per shard, as the ablation stage ablates.
    probes = resolve_probes(model, NEURON_HEADS)
    full = xr.concat(
        [
            neuron_direct_effects(model, rows[a:b], "resample", probes).assign_coords(
                batch=np.arange(a, b)
            )
            for a, b in BOUNDS
        ],
        "batch",
    )
    assert float(np.abs(ds.de_ablated - full.de_ablated).max()) < 1e-6
    red = open_zarr(paths["reductions"])
    assert red.sizes["threshold"] == 2 and red.attrs["top_n"] == 3


def former_neuron_reductions(selected: str, out: str, attrs: dict) -> None:
    """What the neuron_reductions rule (removed: neuron_effects reduces its neurons itself) did
    with a store of every neuron: read it, reduce it, add its own provenance, write."""
    source = open_zarr(selected).load()
    ds = neuron_reductions(source, **NEURONS)
    ds.attrs.update(provenance(**attrs, model_revision=revision_of(source)))
    write_zarr(ds, out)


def store_files(store: str) -> dict[str, bytes]:
    """A store's files by relative path: every array's chunks and metadata, not the root's
    attributes (compared as values: they name the store's place)."""
    root = Path(store)
    files = {f.relative_to(root).as_posix(): f for f in root.rglob("*") if f.is_file()}
    return {
        name: f.read_bytes() for name, f in files.items() if name not in (".zattrs", ".zmetadata")
    }


def test_neuron_reductions_are_those_of_the_two_rule_pipeline(run, tmp_path):
    """reductions.zarr of either layout is what the former neuron_reductions rule made of the
    store of every neuron: the same values and attributes, the same bytes in every array."""
    paths, _ = run
    before = str(tmp_path / "reductions.zarr")
    former_neuron_reductions(paths["selected_all"], before, {"model": "random-pythia"})
    expected = open_zarr(before).load()
    assert expected.attrs["top_n"] == 3 and "versions" in expected.attrs
    for layout in ("reductions", "reductions_all"):
        got = open_zarr(paths[layout]).load()
        xr.testing.assert_identical(got, expected)
        assert got.attrs == expected.attrs  # assert_identical compares them too: said plainly
        assert store_files(paths[layout]) == store_files(before), layout


def test_a_top_n_wider_than_the_layer_fails_before_any_pass(run, tmp_path, monkeypatch):
    paths, _ = run
    monkeypatch.setattr(neurons, "select_neuron_tokens", lambda *a, **k: pytest.fail("ran"))
    out = {"out": str(tmp_path / "selected.zarr"), "reductions_out": str(tmp_path / "red.zarr")}
    with pytest.raises(ValueError, match=r"top_n must lie in \[1, 256\]"):
        mp.neuron_effects(
            ModelJob(paths["tokens"], {"name": "random-pythia"}, batch_size=3, shards=BOUNDS),
            heads=NEURON_HEADS,
            mlp_layer=-1,
            ablation="resample",
            top_fraction=0.1,
            mean_include_bos=True,
            thresholds=[0.5],
            top_n=257,
            store_tokens="top",
            **out,
            attrs={"model": "random-pythia"},
        )
    assert not any(tmp_path.iterdir())


def test_top_layout_keeps_all_but_the_neuron_arrays(run):
    """engine.store_tokens: top drops neuron_de_clean/ablated from selected.zarr; every other
    variable, coordinate and attribute is the `all` store's."""
    paths, _ = run
    top, every = open_zarr(paths["selected"]).load(), open_zarr(paths["selected_all"]).load()
    assert set(PER_NEURON) <= set(every.data_vars) and not set(PER_NEURON) & set(top.data_vars)
    assert {"token_row", "token_pos", "score", "de_clean", "mlp_de_ablated"} <= set(top.data_vars)
    xr.testing.assert_identical(top, every.drop_vars(PER_NEURON))


def test_norm_store_lines_up_with_the_ablation_shards(run):
    paths, _ = run
    for ablation in ("resample", "zero"):
        ds = open_zarr(paths["norms"][ablation]).load()
        engine = xr.concat([open_zarr(p) for p in paths["shards"][ablation]], "batch")
        eng = engine.sel(layer=2, head=3)
        np.testing.assert_allclose(
            ds.ln_scale_ratio.sel(head="L2H3"), eng.ln_scale_clean / eng.ln_scale_ablated, 1e-6
        )
        assert ds.attrs["ln_scale_rerun_max_relative_difference"] < 1e-5
        assert ds.attrs["ablation"] == ablation and ds.attrs["n_tokens"] == 99


def test_norms_against_another_ablations_store_are_refused(run, tmp_path):
    paths, _ = run
    out = tmp_path / "bad.zarr"
    with pytest.raises(ArithmeticError, match="differs from the ablation store"):
        mp.norm_ratios(
            ModelJob(paths["tokens"], {"name": "random-pythia"}, batch_size=3, shards=BOUNDS),
            engine_shards=paths["shards"]["zero"],
            heads=NORM_HEADS,
            ablation="resample",
            top_fraction=0.1,
            mean_include_bos=True,
            out=str(out),
            attrs={"model": "random-pythia"},
        )
    assert not out.exists()


def test_reinforcement_store_covers_the_second_half(run):
    paths, _ = run
    ds = open_zarr(paths["reinforcement"])
    assert ds.sizes["head"] == 8 and ds.sizes["batch"] == 4 and ds.sizes["pos"] == 6
    assert "L2H1" in ds["head"].values.tolist() and ds.classification.dtype.kind == "U"


def test_figure_builders_read_the_stores(run):
    paths, _ = run
    t07 = {"model": "random-pythia", "heads": [[1, 2]]}
    assert len(mechanism_figures.fig07(paths["reductions"], t07).axes) == 2  # panel, colour bar
    t08 = [t07, {"model": "random-pythia", "heads": [[0, 1]]}]
    fig = mechanism_figures.fig08([paths["reductions"]] * 2, t08, ranks=20)
    assert [ax.get_title() for ax in fig.axes] == ["random-pythia L1H2", "random-pythia L0H1"]
    assert len(mechanism_figures.fig15(paths["reductions"], t07).axes) == 3
    t04 = {"model": "random-pythia", "heads": [[2, 3]]}
    assert len(mechanism_figures.fig04(paths["norms"], t04).axes) == 2
    t16 = {"model": "random-pythia", "heads": [[2, 3], [1, 0]]}
    assert len(mechanism_figures.fig16_18(paths["norms"], t16).axes) == 4
    t09 = {"model": "random-pythia", "heads": [[2, 1]]}
    assert len(mechanism_figures.fig09(paths["reinforcement"], t09, [1.0]).axes) == 1
    assert len(mechanism_figures.fig19(paths["reinforcement"], t09, None).axes) == 2
    with pytest.raises(ValueError, match="has no head L0H0"):
        mechanism_figures.fig07(paths["reductions"], {"model": "random-pythia", "heads": [[0, 0]]})
    with pytest.raises(ValueError, match="holds model 'random-pythia', not 'other'"):
        mechanism_figures.fig15(paths["reductions"], {"model": "other", "heads": [[1, 2]]})
    with pytest.raises(ValueError, match=r"has no scale \[3.0\]"):
        mechanism_figures.fig09(paths["reinforcement"], t09, [3.0])


def snakemake_job(inputs: dict, **params) -> SimpleNamespace:
    """What a rule's script sees as `snakemake`: input, params and threads."""
    rule = {"model": {"name": "m", "heads": [[1, 2]]}, "batch_size": 8, "device": "cpu"}
    rule.update(dtype="float32", **params)
    return SimpleNamespace(
        input=InputFiles(fromdict=inputs), params=Params(fromdict=rule), threads=3
    )


def test_model_job_reads_the_rule_keys_once():
    shard = ModelJob.from_snakemake(
        snakemake_job({"tokens": "t.zarr", "model_dir": "ckpt"}, bounds=(4, 8))
    )
    assert shard == ModelJob(
        "t.zarr", {"name": "m", "heads": [[1, 2]]}, 8, "ckpt", "cpu", "float32", ((4, 8),), 3
    )
    assert shard.bounds == (4, 8) and shard.heads == [(1, 2)]
    every = ModelJob.from_snakemake(snakemake_job({"tokens": "t.zarr"}, bounds=[[0, 4], [4, 8]]))
    assert every.shards == ((0, 4), (4, 8)) and every.checkpoint is None
    with pytest.raises(ValueError, match="reads one shard, not 2"):
        every.bounds  # noqa: B018
    assert ModelJob.from_snakemake(snakemake_job({"tokens": "t.zarr"})).shards == ()
    smk = snakemake_job({"tokens": "t.zarr"}, top_n=3)
    assert rule_params(smk, "top_n", "device") == {"top_n": 3, "device": "cpu"}
