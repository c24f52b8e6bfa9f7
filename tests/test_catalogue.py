"""The model catalogue (selfrepair.catalogue): the paper models' official names are
TransformerLens' own, their shapes those of the stand-ins the benchmarks build and of the
config.json files the offline hub writes, as the config reads them back."""

from __future__ import annotations

import json
import sys

import pytest
from helpers import ROOT

from selfrepair import catalogue
from selfrepair.catalogue import PAPER_MODELS, Shapes
from selfrepair.config import memory, storage
from selfrepair.config.models import model_dims, official_model_name, parallel_blocks

sys.path.insert(0, str(ROOT / "tools"))
# What config/memory.py reads of a checkpoint's config.json.
READ_BACK = ("n_layers", "n_heads", "d_model", "d_mlp", "d_vocab", "n_positions", "gated_mlp")
READ_BACK += ("tied",)


@pytest.mark.parametrize("name", sorted(PAPER_MODELS))
def test_the_official_names_are_transformer_lens_own(name):
    assert PAPER_MODELS[name].official == official_model_name(name)
    for alias, target in catalogue.ALIASES.items():
        assert official_model_name(alias) == PAPER_MODELS[target].official


@pytest.mark.parametrize("name", sorted(PAPER_MODELS))
def test_the_config_knows_a_paper_model_by_name_from_the_catalogue(name):
    shapes = PAPER_MODELS[name].shapes
    assert model_dims({"name": name.upper()}) == (shapes.n_layers, shapes.n_heads)
    assert parallel_blocks({"name": name}) is (PAPER_MODELS[name].family == "pythia")
    expected = Shapes(n_layers=shapes.n_layers, n_heads=shapes.n_heads, d_mlp=shapes.d_mlp)
    assert storage.storage_dims({"name": name}, {"data": {}}) == expected
    assert shapes.d_head * shapes.n_heads == shapes.d_model


def test_an_unknown_name_is_a_one_line_error_naming_the_fix():
    with pytest.raises(catalogue.CatalogueError, match="use a TransformerLens name"):
        catalogue.official_model_name("no-such-model")
    assert catalogue.paper_model("GPT2") is PAPER_MODELS["gpt2-small"]
    assert catalogue.paper_model("opt-125m") is None


def test_the_offline_hub_writes_the_catalogue_shapes_as_the_config_reads_them(tmp_path):
    """config.json of each offline stand-in, read back by config/memory.py (the memory check):
    the catalogue's sizes, gating and tying."""
    import offline_hub

    written = {**offline_hub.MODELS, "llama-7b": offline_hub.LLAMA_7B}
    for name, hf in written.items():
        (tmp_path / name).mkdir()
        (tmp_path / name / "config.json").write_text(json.dumps(hf))
        read = memory.model_size({"name": name, "path": str(tmp_path / name)}, {})
        paper = PAPER_MODELS[name].shapes
        for field in READ_BACK:
            assert getattr(read, field) == getattr(paper, field), (name, field)
    assert all(offline_hub.repo_for(name) == PAPER_MODELS[name].official for name in written)


def test_the_benchmarks_stand_ins_have_the_catalogue_shapes():
    """paper_cost times random models built from the catalogue: their HookedTransformerConfig
    has its shapes (d_head and d_mlp as the real models have them)."""
    pytest.importorskip("transformer_lens")
    from benchmarks import paper_cost

    for name in paper_cost.ARCHITECTURES:
        built = paper_cost.shapes_of(name)
        paper = PAPER_MODELS[name].shapes
        for field in ("n_layers", "d_model", "n_heads", "d_head", "d_mlp", "d_vocab"):
            assert getattr(built, field) == getattr(paper, field), (name, field)
        assert built.parallel_attn_mlp == paper.parallel_attn_mlp
    assert paper_cost.shapes_of("llama-7b") is PAPER_MODELS["llama-7b"].shapes
