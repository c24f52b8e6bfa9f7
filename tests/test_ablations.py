"""The ablation kinds' one registry (selfrepair.ablations): the schema offers exactly its kinds;
a kind defined only there is measured by the engine, AtP and the sets exactly as the kind it
copies, and named by the captions, the colours, the explorer and the output paths; no module
outside it and the slow references compares an ablation with a kind's name or spells the
frozen-LayerNorm suffix."""

from __future__ import annotations

import re
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import xarray as xr
import yaml
from helpers import ROOT, SCHEMA
from tasks_helpers import padded_task

from selfrepair.ablations import (
    FROZEN_LN_SUFFIX,
    KINDS,
    TASK_ABLATIONS,
    TASK_VARIANTS,
    TEXT_ABLATIONS,
    ablation_kind,
    parse_variant,
    variant,
)
from selfrepair.engine.atp import measure_atp
from selfrepair.engine.self_repair import measure_heads
from selfrepair.engine.sets import measure_sets
from selfrepair.variables import HEAD_VARIABLES

# The schema's ablation enums, by the keys that lead to them, and the kinds each must offer.
KIND_ENUMS = {
    "ablations": TEXT_ABLATIONS,
    "engine.frozen_ln": TEXT_ABLATIONS,
    "figures.ablation": TEXT_ABLATIONS,
    "mechanisms.neurons.ablation": TEXT_ABLATIONS,
    "tasks.<name>.ablations": TASK_VARIANTS,
}


def schema_enums(node, keys=()):
    """(the config keys leading to it, its values) of every enum in a JSON schema."""
    if isinstance(node, list):
        for item in node:
            yield from schema_enums(item, keys)
    if not isinstance(node, dict):
        return
    if "enum" in node:
        yield ".".join(keys), node["enum"]
    for word, value in node.items():
        if word == "properties":
            for key, sub in value.items():
                yield from schema_enums(sub, (*keys, key))
        elif word == "additionalProperties":
            yield from schema_enums(value, (*keys, "<name>"))
        elif word != "enum":
            yield from schema_enums(value, keys)


def test_the_schema_offers_exactly_the_registry_kinds():
    """Every enum of the schema that names an ablation kind is one of the five, and each offers
    the registry's kinds: running text's, or (a task's) all of them."""
    schema = yaml.safe_load(Path(SCHEMA).read_text())
    found = {
        keys: values
        for keys, values in schema_enums(schema)
        if set(values) & set(KINDS)  # an enum of kinds
    }
    assert set(found) == set(KIND_ENUMS), found
    for keys, values in found.items():
        assert sorted(values) == sorted(KIND_ENUMS[keys]), keys
        assert len(values) == len(set(values)), keys


def test_kinds_and_their_variants():
    # the paper's, in its order, then CoAx's zero (z and b_V)
    assert TEXT_ABLATIONS == ("resample", "mean", "zero", "zero-with-value-bias")
    assert set(TASK_ABLATIONS) == {*TEXT_ABLATIONS, "corrupted", "template-mean"}
    for name in KINDS:
        assert ablation_kind(name).name == name
        assert parse_variant(variant(name, True)) == (name, True)
        assert parse_variant(variant(name, False)) == (name, False)
    assert variant("mean", True) == "mean" + FROZEN_LN_SUFFIX == "mean-frozen-ln"
    with pytest.raises(ValueError, match="unknown ablation 'resample-frozen-ln': choose one of"):
        ablation_kind("resample-frozen-ln")  # a variant, not a kind: the engine takes freeze_ln
    with pytest.raises(ValueError, match="partner rows needs partner_label"):
        replace(KINDS["resample"], name="other", partner_label=None)
    with pytest.raises(ValueError, match="partner_pool must be None, 'rows' or 'task'"):
        replace(KINDS["resample"], name="other", partner_pool="shard")
    with pytest.raises(ValueError, match="table must be None or one of"):
        replace(KINDS["mean"], name="other", table="median")
    # what each kind reads: running text has no corrupted prompts
    assert [k.name for k in KINDS.values() if k.needs_corrupted] == ["corrupted", "template-mean"]
    assert [k.name for k in KINDS.values() if k.reads_mean] == ["mean"]


@pytest.fixture
def copied_kinds(monkeypatch):
    """Two kinds defined only in the registry: 'blank' replaces z as zero does, 'next' as
    resample does (partner rows among the rows measured)."""
    monkeypatch.setitem(KINDS, "blank", replace(KINDS["zero"], name="blank", color=None))
    monkeypatch.setitem(KINDS, "next", replace(KINDS["resample"], name="next"))
    return {"blank": "zero", "next": "resample"}


def assert_same_numbers(got, want):
    for name in want.data_vars:
        np.testing.assert_array_equal(got[name].values, want[name].values, err_msg=name)


def test_a_registry_kind_is_measured_by_the_engine_atp_and_the_sets(
    tiny_model, tiny_tokens, copied_kinds, one_torch_thread
):
    """The engine, AtP and the sets read a kind's properties, never its name: a copy under a
    new name gives the same numbers bitwise (partner coordinate included), under its own name."""
    tokens, task = padded_task(tiny_model)
    sets = {"pair": [(0, 0), (1, 1)]}
    for name, original in copied_kinds.items():
        got = measure_heads(tiny_model, tiny_tokens, name, batch_size=3)
        want = measure_heads(tiny_model, tiny_tokens, original, batch_size=3)
        assert got.attrs["ablation"] == name
        assert_same_numbers(got, want)
        assert ("resample_source" in got.coords) == (name == "next")
        if name == "next":
            np.testing.assert_array_equal(got.resample_source, want.resample_source)
        got = measure_atp(tiny_model, tiny_tokens, name, batch_size=3, graddrop=False)
        want = measure_atp(tiny_model, tiny_tokens, original, batch_size=3, graddrop=False)
        assert_same_numbers(got, want)
        got = measure_sets(tiny_model, tokens, name, sets, batch_size=2, task=task)
        want = measure_sets(tiny_model, tokens, original, sets, batch_size=2, task=task)
        for variable in HEAD_VARIABLES:
            np.testing.assert_array_equal(got[variable].values, want[variable].values)


def test_the_explorer_takes_partners_from_the_registry(copied_kinds):
    from selfrepair.analysis.explorer import answer_rows, partner_rows

    tokens = np.arange(12).reshape(4, 3)
    corrupted = -tokens
    # a task_ablate store's answer tokens (analysis.tasks.scored_tokens) with its partners,
    # put back on rows as the explorer reads every store (answer_rows)
    store = xr.Dataset(
        {"de_clean": (("layer", "head", "token"), np.zeros((1, 1, 5)))},
        coords={"prompt": ("token", [0, 1, 1, 2, 3]), "position": ("token", [0, 0, 1, 1, 0])},
    )
    shard = answer_rows(
        store.assign_coords(resample_source=("token", [2, 3, 3, 0, 1])), ["de_clean"]
    )
    kw = {"corrupted": corrupted, "sources": [(shard.batch.values, shard.resample_source.values)]}
    for name, original in copied_kinds.items():
        got, want = partner_rows(name, tokens, **kw), partner_rows(original, tokens, **kw)
        np.testing.assert_array_equal(got[0], want[0])
        assert (got[1] is None) == (want[1] is None)
        if want[1] is not None:
            np.testing.assert_array_equal(got[1], want[1])
    rows, partner = partner_rows("corrupted", tokens, **kw)
    assert rows.shape == (8, 3) and partner.tolist() == [4, 5, 6, 7]
    rows, partner = partner_rows("resample-frozen-ln", tokens, **kw)
    assert rows.shape == (4, 3) and partner.tolist() == [2, 3, 0, 1]  # the store's, not i + 1
    assert partner_rows("mean", tokens, **kw)[1] is None


def test_atp_refuses_a_kind_whose_partners_lie_outside_the_rows(tiny_model, tiny_tokens):
    with pytest.raises(ValueError, match="does not take 'corrupted'.*resample, mean, zero"):
        measure_atp(tiny_model, tiny_tokens, "corrupted")


def test_tables_read_when_imported_list_a_registered_kind():
    """A kind registered before the captions, colours, output folders and
    variables.ABLATIONS are imported is in each (none lists the kinds itself); without torch."""
    code = """
import sys
from dataclasses import replace
from pathlib import Path
import selfrepair.ablations as A
A.register(replace(A.KINDS["zero"], name="blank", note="blank note", color="#123456"))
A.register(replace(A.KINDS["corrupted"], name="swapped", partner_label="swapped {row}"))
from selfrepair.variables import ABLATIONS
from selfrepair.plots.captions import ABLATION_NOTES
from selfrepair.plots.style import ABLATION_COLORS
from selfrepair.config.places import ABLATION_FOLDERS, ABLATION_NAMES, WORKFLOW_FOLDERS
assert ABLATIONS == ("resample", "mean", "zero", "zero-with-value-bias", "blank"), ABLATIONS
assert A.TASK_ABLATIONS[-2:] == ("blank", "swapped")
assert ABLATION_NOTES["blank"] == "blank note" and "swapped" in ABLATION_NOTES
assert ABLATION_COLORS["blank"] == "#123456"
assert ABLATION_FOLDERS[-2:] == ("blank", "swapped")
assert {"blank-frozen-ln", "swapped"} <= ABLATION_NAMES <= WORKFLOW_FOLDERS
assert "torch" not in sys.modules
try:
    A.register(A.KINDS["zero"])
except ValueError as err:
    assert "taken" in str(err)
else:
    raise AssertionError("a kind registered twice")
"""
    proc = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr[-2000:]


def test_explorer_labels_the_partner_of_a_kind_registered_after_its_import(monkeypatch):
    """The explorer reads a partner's label from the registry when it labels one, so a kind
    added after selfrepair.analysis.explorer was imported (here: in this process, long after)
    is labelled, under its frozen-LayerNorm variant too; a kind without partner rows is refused."""
    from selfrepair.analysis import explorer

    monkeypatch.setitem(
        KINDS, "swapped", replace(KINDS["corrupted"], name="swapped", partner_label="swap {row}")
    )
    monkeypatch.setitem(KINDS, "blank", replace(KINDS["zero"], name="blank"))
    tokens = np.arange(20).reshape(4, 5)
    for name in ("swapped", variant("swapped", True)):
        entry = explorer.candidate_entry(
            1,
            2,
            values={},
            windows={"de": [], "sr": []},
            tokens=tokens,
            context=2,
            partner_row=3,
            partner_kind=name,
        )
        assert entry["partner"]["label"] == "swap 3"
    assert explorer.partner_label("resample", 7) == "resample partner row 7"
    with pytest.raises(ValueError, match="'blank' takes no partner row"):
        explorer.partner_label("blank", 3)


# A kind compared by name: `ablation == "mean"`, `ablation in ("resample", ...)`,
# `"corrupted" in spec["ablations"]`, `.startswith("resample")`.
KIND = "|".join(map(re.escape, KINDS))
BY_NAME = re.compile(
    rf"ablation[^#\n]*(==|!=|startswith\(|\bin\b)[^#\n]*[\"']({KIND})[\"']"
    rf"|[\"']({KIND})[\"']\s+(not\s+)?in\s+\w"
)


def code_files():
    """The package and workflow files that must read kinds from the registry: all but the
    registry and the slow references (independent by design)."""
    for path in [*ROOT.glob("selfrepair/**/*.py"), *ROOT.glob("workflow/**/*.smk")]:
        relative = path.relative_to(ROOT).as_posix()
        if relative != "selfrepair/ablations.py" and not relative.startswith(
            "selfrepair/reference"
        ):
            yield relative, path.read_text()


def test_no_module_compares_an_ablation_with_a_kind_name_or_spells_the_frozen_suffix():
    found = [
        f"{relative}:{number}: {line.strip()}"
        for relative, text in code_files()
        for number, line in enumerate(text.splitlines(), 1)
        if BY_NAME.search(line) or FROZEN_LN_SUFFIX + '"' in line
    ]
    assert not found, "read the kind's properties (selfrepair.ablations):\n" + "\n".join(found)
