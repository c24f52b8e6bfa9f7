"""What every workflow job shares: its log file and the provenance written on its outputs."""

from __future__ import annotations

import contextlib
import logging
import platform
from collections.abc import Iterator
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

from . import __version__

log = logging.getLogger("selfrepair")

PACKAGES = ("torch", "transformer-lens", "transformers", "numpy", "xarray", "zarr")


@contextlib.contextmanager
def logged(path: str | None) -> Iterator[None]:
    """Send stdout, stderr (tqdm) and logging of a job to its Snakemake log file."""
    if not path:
        yield
        return
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    with (
        open(path, "w", buffering=1) as fh,
        contextlib.redirect_stdout(fh),
        contextlib.redirect_stderr(fh),
    ):
        handler = logging.StreamHandler(fh)
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
        root = logging.getLogger()
        root.addHandler(handler)
        root.setLevel(logging.INFO)
        try:
            yield
        except BaseException:
            log.exception("job failed")
            raise
        finally:
            root.removeHandler(handler)


def package_versions() -> dict[str, str]:
    out = {"python": platform.python_version(), "selfrepair": __version__}
    for pkg in PACKAGES:
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            out[pkg] = "not installed"
    return out


def provenance(**extra: Any) -> dict[str, Any]:
    """Attributes recorded on every store: what made it, with which versions."""
    return {"versions": package_versions(), **extra}
