"""Substitute heads picked at run time by the paper's criteria (selfrepair.analysis.substitutes;
the pick_substitute rule and the record readers in selfrepair.stages.summaries): the pure picking
functions on small synthetic stores against hand computations, the pick records and caption
sentences, and the config checks of `substitute: {model, pick}`."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import xarray as xr
from helpers import SCHEMA, load, merged
from snakemake.utils import validate

import selfrepair.config as sr_config
from selfrepair.analysis.substitutes import (
    describe,
    pick_largest_top_de,
    pick_most_self_repressing,
    pick_record,
    rank_heads,
)
from selfrepair.config.mechanisms import mechanism_targets, pick_targets
from selfrepair.stages.store import write_zarr
from selfrepair.stages.summaries import heads_with_picks, pick_substitute, resolve_params

NAN = math.nan


def spec(**kw) -> dict:
    base = {"criterion": "largest_top_de", "n": 1, "rank": 1, "layers": "late"}
    base.update({"mlp_layer": None, "parallel": None}, **kw)
    return base


# --- rank_heads -----------------------------------------------------------------------------


def test_rank_heads_orders_by_value_then_layer_then_head():
    values = {(3, 1): 2.0, (2, 2): 5.0, (2, 0): 2.0, (3, 0): NAN, (2, 1): 1.0}
    # Descending: 5.0 (2,2); tie at 2.0 between (2,0) and (3,1): the lower layer first; 1.0.
    assert rank_heads(values, n=4) == [((2, 2), 5.0), ((2, 0), 2.0), ((3, 1), 2.0), ((2, 1), 1.0)]
    assert rank_heads(values, n=1, rank=3) == [((3, 1), 2.0)]
    assert rank_heads(values, n=2, largest=False) == [((2, 1), 1.0), ((2, 0), 2.0)]
    tie = {(1, 3): 0.5, (1, 2): 0.5, (0, 3): 0.5}
    assert [h for h, _ in rank_heads(tie, n=3)] == [(0, 3), (1, 2), (1, 3)]


def test_rank_heads_refuses_too_few_heads_with_a_value():
    with pytest.raises(ValueError, match="2 candidate heads with a value, fewer than"):
        rank_heads({(0, 0): 1.0, (0, 1): NAN, (1, 0): 3.0}, n=2, rank=2)


# --- largest_top_de -------------------------------------------------------------------------


def summary(top: np.ndarray, top_fraction: float = 0.02) -> xr.Dataset:
    layers, heads = top.shape
    return xr.Dataset(
        {"top_de_clean": (("layer", "head"), top.astype(np.float32))},
        coords={"layer": np.arange(layers), "head": np.arange(heads)},
        attrs={"model": "toy", "top_fraction": top_fraction},
    )


# 4 layers x 3 heads; layers 0-1 hold the largest values, which a late pick must ignore.
TOP = np.array(
    [
        [9.0, 9.0, 9.0],
        [8.0, 8.0, 8.0],
        [1.0, 4.0, 3.0],
        [3.0, NAN, 0.5],  # L3H1 not measured
    ]
)


def test_largest_top_de_ranks_the_late_heads_only():
    ds = summary(TOP)
    heads = [h for h, _ in pick_largest_top_de(ds, spec(n=4))]
    # Late layers 2, 3: L2H1 4.0, then the tie at 3.0 (L2H2 before L3H0), then L2H0 1.0.
    assert heads == [(2, 1), (2, 2), (3, 0), (2, 0)]
    assert pick_largest_top_de(ds, spec(n=1, rank=3)) == [((3, 0), 3.0)]
    # Only 5 late heads have a value (L3H1 is NaN).
    with pytest.raises(ValueError, match="5 candidate heads"):
        pick_largest_top_de(ds, spec(n=6))


def test_largest_top_de_in_the_last_layer():
    assert pick_largest_top_de(summary(TOP), spec(layers="last")) == [((3, 0), 3.0)]


def test_largest_top_de_with_an_mlp_that_must_read_the_head():
    ds = summary(TOP)
    # Parallel blocks: the last MLP (layer 3) reads layers 0-2 only, so L3 heads are out.
    parallel = pick_largest_top_de(ds, spec(n=3, mlp_layer=-1, parallel=True))
    assert [h for h, _ in parallel] == [(2, 1), (2, 2), (2, 0)]
    # Sequential blocks: the MLP of layer 3 reads layer 3's heads too.
    sequential = pick_largest_top_de(ds, spec(n=3, mlp_layer=-1, parallel=False))
    assert [h for h, _ in sequential] == [(2, 1), (2, 2), (3, 0)]
    # An MLP below the late layers reads none of them.
    with pytest.raises(ValueError, match="0 candidate heads"):
        pick_largest_top_de(ds, spec(mlp_layer=1, parallel=False))


def test_candidate_layers():
    assert sr_config.candidate_layers(5, "late") == [2, 3, 4]
    assert sr_config.candidate_layers(5, "last") == [4]
    assert sr_config.candidate_layers(5, "late", -1, True) == [2, 3]
    assert sr_config.candidate_layers(5, "late", 3, False) == [2, 3]
    assert sr_config.candidate_layers(5, "late", -1, None) == [2, 3]  # unknown: as parallel


# --- most_self_repressing -------------------------------------------------------------------


def reinforcement(slopes: dict[str, list[float]], scales=(1.0, 3.0, 5.0)) -> xr.Dataset:
    labels = list(slopes)
    return xr.Dataset(
        {"slope": (("head", "scale"), np.array([slopes[k] for k in labels], np.float32))},
        coords={"head": labels, "scale": list(scales)},
        attrs={"model": "toy"},
    )


SLOPES = {
    "L0H1": [0.1, 0.1, 0.1],  # a listed first-half head: not a candidate
    "L2H0": [0.9, 0.7, 0.56],
    "L2H1": [0.5, 0.6, 0.8],  # smallest at s = 1 only
    "L3H0": [1.0, 1.0, 0.56],  # ties L2H0 at s = 5: the lower layer wins
    "L3H1": [1.01, 0.99, 0.9],
}


def test_most_self_repressing_is_the_smallest_slope_at_the_largest_scale():
    ds = reinforcement(SLOPES)
    assert pick_most_self_repressing(ds, spec(n=1)) == [((2, 0), pytest.approx(0.56))]
    picked = pick_most_self_repressing(ds, spec(n=3))
    assert [h for h, _ in picked] == [(2, 0), (3, 0), (2, 1)]
    assert [h for h, _ in pick_most_self_repressing(ds, spec(n=1, rank=4))] == [(3, 1)]


def test_most_self_repressing_uses_the_largest_scale_whatever_its_position():
    ds = reinforcement({"L1H0": [0.2, 0.9], "L1H1": [0.8, 0.3]}, scales=(5.0, 1.0))
    assert pick_most_self_repressing(ds, spec()) == [((1, 0), pytest.approx(0.2))]


# --- records, captions ----------------------------------------------------------------------


def test_pick_records_name_the_heads_and_the_values_that_chose_them():
    rec = pick_record("toy", "fig09", spec(criterion="most_self_repressing"), reinforcement(SLOPES))
    assert rec["heads"] == [[2, 0]] and rec["values"] == [pytest.approx(0.56, abs=1e-6)]
    assert rec["description"] == "the most self-repressing second-half head (slope 0.56 at s = 5)"
    rec = pick_record("toy", "fig03", spec(n=2), summary(TOP))
    assert rec["heads"] == [[2, 1], [2, 2]]
    assert rec["description"] == (
        "the 2 late heads with the largest mean clean direct effect on their top 2% tokens "
        "(4.00, 3.00 logits)"
    )
    one = describe(spec(rank=2, mlp_layer=-1), [1.5], {"top_fraction": 0.02, "mlp": 3})
    assert one == (
        "the late head read by the layer-3 MLP with the 2nd largest mean clean direct effect "
        "on its top 2% tokens (1.50 logits)"
    )
    rec = pick_record("toy", "fig07", spec(mlp_layer=-1, parallel=True), summary(TOP))
    assert rec["heads"] == [[2, 1]] and rec["mlp"] == 3
    assert rec["description"].startswith("the late head read by the layer-3 MLP with the")
    with pytest.raises(ValueError, match="holds 'other'"):
        pick_record("toy", "fig03", spec(), summary(TOP).assign_attrs(model="other"))


def test_pick_substitute_writes_the_record_that_figures_and_stages_read(tmp_path):
    store = tmp_path / "summary.zarr"
    write_zarr(summary(TOP), store)
    target = sr_config.FigureTarget(
        "figures.fig05",
        "toy",
        (),
        "pythia-160m",
        ((11, 10),),
        "pythia-160m is not among this run's models",
        spec(layers="last"),
    )
    out = tmp_path / "fig05.json"
    pick_substitute(
        store=str(store), model="toy", key="fig05", target=target.key, pick=target.pick, out=out
    )
    record = json.loads(out.read_text())
    assert record["heads"] == [[3, 0]] and record["target"] == "figures.fig05"
    params = resolve_params(target.as_params(), [str(out)])
    assert params["heads"] == [[3, 0]]
    assert params["substitution"] == (
        "toy L3H0, the last-layer head with the largest mean clean direct effect on its top 2% "
        "tokens (3.00 logits), is a substitute for the paper's pythia-160m L11H10 "
        "(pythia-160m is not among this run's models)."
    )
    assert heads_with_picks([[3, 0], [1, 2]], [str(out)]) == [(1, 2), (3, 0)]
    literal = sr_config.FigureTarget("figures.fig05", "toy", ((1, 1),), "toy", ((1, 1),))
    assert resolve_params(literal.as_params(), [str(out)]) == literal.as_params()
    with pytest.raises(ValueError, match="resolve it first"):
        target.substitution()


# --- config ---------------------------------------------------------------------------------


def demo() -> dict:
    config = merged(load("config.yaml"), load("demo.yaml"))
    validate(config, SCHEMA)
    return config


def test_demo_picks_every_substitute_by_the_papers_criteria():
    config = demo()
    figures = sr_config.figure_targets(config)
    assert figures["fig03"].pick == spec(n=4) and figures["fig05"].pick == spec(layers="last")
    mech = mechanism_targets(config)
    picks = pick_targets(mech)
    assert set(picks) == {"fig07", "fig08-0", "fig08-1", "fig08-2", "fig15", "fig04"} | {
        "fig16_18",
        "fig09",
    }
    assert picks["fig07"].pick == spec(mlp_layer=-1, parallel=True)  # tiny-pythia: parallel
    assert picks["fig08-0"].pick == spec(mlp_layer=-1, parallel=False)  # tiny-gpt2
    assert picks["fig08-2"].pick["rank"] == 2
    assert picks["fig16_18"].pick == spec(n=2)
    assert picks["fig09"].pick == spec(criterion="most_self_repressing")
    # Every demo substitute is picked: no literal heads are left to drift.
    assert all(t.picked for t in figures.values() if t.paper_heads)
    assert all(t.picked for ts in mech.values() for t in ts)


def test_the_run_start_announces_picks_before_they_are_made():
    """onstart (workflow/Snakefile) prints every substitute before any job: a pick not yet made
    is named by its rule, never by heads it does not have yet."""
    config = demo()
    figures = sr_config.figure_targets(config)
    assert figures["fig03"].announcement() == (
        "tiny-pythia's 4 heads by largest_top_de, picked at run time, in place of the paper's "
        "pythia-410m L22H11, L20H6, L23H1, L20H14 (pythia-410m is not among this run's models)."
    )
    fig08 = pick_targets(mechanism_targets(config))["fig08-2"]
    assert "1 head by largest_top_de from rank 2, picked at run time" in fig08.announcement()
    with pytest.raises(ValueError, match="resolve it first"):
        figures["fig03"].substitution()  # a caption needs the picked heads
    resolved = figures["fig03"].resolved(
        {"model": "tiny-pythia", "heads": [[3, 1]], "description": "chosen"}
    )
    assert resolved.announcement() == resolved.substitution()


def with_sub(config: dict, path: str, sub: dict) -> dict:
    node = config
    keys = path.split(".")
    for key in keys:
        node = node[int(key)] if key.isdigit() else node[key]
    node["substitute"] = sub
    return config


@pytest.mark.parametrize(
    ("path", "sub", "expected"),
    [
        (
            "figures.fig05",
            {"model": "tiny-pythia", "pick": "most_self_repressing"},
            "config key figures.fig05.substitute.pick: unknown criterion 'most_self_repressing' "
            "for fig05; use largest_top_de",
        ),
        (
            "figures.fig05",
            {"model": "tiny-pythia", "pick": "largest_top_de", "n": 2},
            "config key figures.fig05.substitute.n: fig05 shows one head; set n: 1",
        ),
        (
            "figures.fig03",
            {"model": "tiny-pythia", "pick": "largest_top_de", "heads": [[2, 0]]},
            "config key figures.fig03.substitute: give either heads or pick, not both",
        ),
        (
            "figures.fig03",
            {"model": "tiny-pythia", "pick": "largest_top_de", "n": 9},
            "config key figures.fig03.substitute: tiny-pythia has 8 candidate heads for "
            "largest_top_de, fewer than rank + n - 1 = 9",
        ),
        (
            "figures.fig02",
            {"model": "tiny-pythia", "pick": "largest_top_de"},
            "config key figures.fig02.substitute.pick: fig02 shows no heads to pick; remove pick",
        ),
        (
            "mechanisms.neurons.fig07",
            {"model": "tiny-pythia", "pick": "largest_top_de", "rank": 5},
            "config key mechanisms.neurons.fig07.substitute: tiny-pythia has 4 candidate heads "
            "for largest_top_de, fewer than rank + n - 1 = 5",
        ),
        (
            "mechanisms.reinforcement.fig09",
            {"model": "tiny-gpt2", "pick": "largest_top_de"},
            "config key mechanisms.reinforcement.fig09.substitute.pick: unknown criterion "
            "'largest_top_de' for fig09; use most_self_repressing",
        ),
        (
            "mechanisms.neurons.fig08.2",
            {"model": "tiny-pythia", "pick": "largest_top_de"},
            "config key mechanisms.neurons.fig08[2].substitute: picks the same head as "
            "mechanisms.neurons.fig08[1]; set a different rank",
        ),
        (
            "mechanisms.norms.fig04",
            {"model": "tiny-llama", "pick": "largest_top_de"},
            "config key mechanisms.norms.fig04.substitute: tiny-llama is not among this run's",
        ),
    ],
)
def test_bad_picks_fail_in_one_line_naming_the_key(path, sub, expected):
    config = with_sub(demo(), path, sub)
    with pytest.raises(sr_config.ConfigError) as info:
        sr_config.figure_targets(config)
        mechanism_targets(config)
    assert str(info.value).startswith(expected)
    assert "\n" not in str(info.value)


def test_self_repression_pick_needs_the_second_half():
    config = demo()
    config["mechanisms"]["reinforcement"]["second_half"] = False
    with pytest.raises(sr_config.ConfigError) as info:
        mechanism_targets(config)
    assert str(info.value) == (
        "config key mechanisms.reinforcement.fig09.substitute.pick: most_self_repressing ranks "
        "the second-half heads; set mechanisms.reinforcement.second_half: true"
    )


def test_unknown_criterion_fails_schema_validation_naming_the_key():
    config = merged(load("config.yaml"), load("demo.yaml"))
    config["figures"]["fig03"]["substitute"]["pick"] = "largest_de"
    with pytest.raises(Exception) as info:
        validate(config, SCHEMA)
    message = sr_config.describe_validation_error(sr_config.validation_error_from(info.value))
    assert message.startswith("config key figures.fig03.substitute.pick: 'largest_de' is not one")


def test_literal_heads_remain_possible():
    config = with_sub(demo(), "figures.fig05", {"model": "tiny-pythia", "heads": [[3, 2]]})
    target = sr_config.figure_targets(config)["fig05"]
    assert not target.picked and target.heads == ((3, 2),)
    assert target.substitution().startswith("tiny-pythia L3H2 is a substitute for the paper's")
