"""The docs' code examples run as written on a finished reduced-demo run (docs/storage.md's
xarray example: open a store, select a head, plot it)."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest
from helpers import ROOT


def python_blocks(page: str) -> list[str]:
    """The ```python blocks of a docs page, in order."""
    text = (ROOT / "docs" / page).read_text()
    return re.findall(r"^```python\n(.*?)^```$", text, re.MULTILINE | re.DOTALL)


def test_the_storage_page_has_its_xarray_example():
    (block,) = python_blocks("storage.md")
    assert "xr.open_zarr" in block and ".sel(layer=3, head=1)" in block


@pytest.mark.slow
def test_the_xarray_example_runs_on_a_finished_run(finished_run, tmp_path):
    run, _ = finished_run
    (tmp_path / "results").symlink_to(run / "results")  # the example writes into its folder
    (block,) = python_blocks("storage.md")
    proc = subprocess.run(
        [sys.executable, "-c", block], cwd=tmp_path, capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert re.fullmatch(r"L3H1 self-repair -?\d+\.\d{3}, clean DE -?\d+\.\d{3}\n", proc.stdout)
    assert (tmp_path / "self_repair.png").stat().st_size > 1000
