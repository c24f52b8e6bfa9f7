"""The public API re-exported from `selfrepair`: every name resolves to the object its module
defines, and `import selfrepair` (with the light subpackages the analysis environment uses)
imports no torch."""

from __future__ import annotations

import importlib
import subprocess
import sys
from pathlib import Path

import pytest

import selfrepair

BLOCKED = ("torch", "jaxtyping", "jsonschema", "transformer_lens", "transformers", "datasets")


def test_every_public_name_resolves_to_its_module_object():
    names = [n for n in selfrepair.__all__ if n != "__version__"]
    assert sorted(names) == sorted(selfrepair._EXPORTS)
    assert len(set(selfrepair.__all__)) == len(selfrepair.__all__)
    for name in names:
        module = importlib.import_module(selfrepair._EXPORTS[name])
        assert getattr(selfrepair, name) is getattr(module, name), name
        # modules without __all__ yet (other rooms add theirs) are not held to one
        assert name in getattr(module, "__all__", [name]), f"{module.__name__}.__all__ lacks {name}"
        assert name in dir(selfrepair)
    with pytest.raises(AttributeError, match="no attribute 'nothing_here'"):
        selfrepair.nothing_here  # noqa: B018


def test_import_selfrepair_and_light_modules_import_no_torch():
    """The analysis environment has none of BLOCKED: importing the package, its light
    subpackages and the data modules (which load tokenizers and data sets only when called)
    must not need them, and must not import torch behind a try."""
    code = (
        "import sys\n"
        "class Block:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        f"        if name.split('.')[0] in {set(BLOCKED)!r}:\n"
        "            raise ImportError('blocked ' + name)\n"
        "sys.meta_path.insert(0, Block())\n"
        "import selfrepair\n"
        "assert 'torch' not in sys.modules\n"
        "dir(selfrepair)\n"
        "import selfrepair.plots.common, selfrepair.variables, selfrepair.ablations\n"
        "import selfrepair.plots.captions, selfrepair.analysis.explorer, selfrepair.config\n"
        "import selfrepair.data.sources, selfrepair.data.hub, selfrepair.data.tokens\n"
        "import selfrepair.data.tokenizer, selfrepair.stages.data\n"
        "from selfrepair import open_tokens, open_zarr, documents, pack_rows\n"
        "blocked = sorted(m for m in sys.modules if m.split('.')[0] in "
        f"{set(BLOCKED)!r})\n"
        "assert not blocked, blocked\n"
    )
    root = Path(__file__).resolve().parents[1]
    proc = subprocess.run(
        [sys.executable, "-c", code], cwd=root, capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
