"""tools/compare_runs.py: the check that a refactor left every result bit for bit the same."""

import importlib.util
import shutil

import numpy as np
import zarr
from helpers import ROOT

spec = importlib.util.spec_from_file_location("compare_runs", ROOT / "tools" / "compare_runs.py")
compare_runs = importlib.util.module_from_spec(spec)
spec.loader.exec_module(compare_runs)


def _run(root, values, attrs):
    store = root / "results" / "m" / "s.zarr"
    group = zarr.open_group(str(store), mode="w", zarr_format=2)
    group.attrs.update(attrs)
    group.create_array("x", data=np.asarray(values, dtype=np.float32), chunks=(2,))
    (root / "results" / "m" / "t.csv").write_text("a,b\n1,2\n")
    (root / "results" / "logs").mkdir(parents=True)
    (root / "results" / "logs" / "job.log").write_text(str(root))  # differs, not compared


def test_identical_runs_and_each_kind_of_difference(tmp_path, capsys):
    a, b = tmp_path / "a", tmp_path / "b"
    _run(a, [1, 2, 3], {"seed": 0, "versions": {"torch": "1"}})
    _run(b, [1, 2, 3], {"seed": 0, "versions": {"torch": "1"}})
    assert compare_runs.main([str(a), str(b)]) == 0
    assert "identical" in capsys.readouterr().out

    _run(c := tmp_path / "c", [1, 2, 3.0000002], {"seed": 0, "versions": {"torch": "2"}})
    problems = compare_runs.compare_runs(a, c, ["results"], ())
    assert problems == ["results/m/s.zarr: attribute 'versions' differs; array 'x': values differ"]
    problems = compare_runs.compare_runs(a, c, ["results"], compare_runs.PROVENANCE_KEYS)
    assert problems == ["results/m/s.zarr: array 'x': values differ"]

    (b / "results" / "m" / "t.csv").write_text("a,b\n1,3\n")
    shutil.copy(b / "results" / "m" / "t.csv", b / "results" / "m" / "u.csv")
    assert compare_runs.compare_runs(a, b, ["results"], ()) == [
        "results/m/t.csv: bytes differ",
        "results/m/u.csv: only in the second run",
    ]
    assert compare_runs.main([str(a), str(b)]) == 1


def test_a_moved_store_is_compared_at_its_new_path(tmp_path, capsys):
    """--map OLD=NEW: the first run's store at OLD is the second's at NEW (`*`: one folder, the
    same in both), its recorded place aside; a value that differs is still found there."""
    a, b, c = tmp_path / "a", tmp_path / "b", tmp_path / "c"
    attrs = {"seed": 0, "selfrepair_place": "m/s.zarr", "selfrepair_metadata_sha256": "1"}
    _run(a, [1, 2, 3], attrs)
    moved = {"selfrepair_place": "m/s/shard-000.zarr", "selfrepair_metadata_sha256": "2"}
    for run, values in ((b, [1, 2, 3]), (c, [1, 2, 4])):
        _run(run, values, attrs | moved)
        (run / "results" / "m" / "s").mkdir()
        (run / "results" / "m" / "s.zarr").rename(run / "results" / "m" / "s" / "shard-000.zarr")
    move = "*/s.zarr=*/s/shard-000.zarr"
    assert compare_runs.compare_runs(a, b, ["results"], ())  # unmapped: only in one run each
    assert compare_runs.compare_runs(a, b, ["results"], (), (move,)) == []
    assert compare_runs.main([str(a), str(b), "--map", move]) == 0
    assert "files of the first run compared at their moved paths" in capsys.readouterr().out
    assert compare_runs.compare_runs(a, c, ["results"], (), (move,)) == [
        "results/m/s/shard-000.zarr: array 'x': values differ"
    ]
    assert compare_runs.moved("m/tasks/t/clean.zarr/x/0", [compare_runs.parse_move(
        compare_runs.DATASET_MOVES[0])]) == "m/tasks/t/clean/shard-000.zarr/x/0"  # fmt: skip
    try:
        compare_runs.parse_move("*/a.zarr=b.zarr")
    except ValueError as err:
        assert "as many * in NEW as in OLD" in str(err)
    else:
        raise AssertionError("a malformed move was taken")
