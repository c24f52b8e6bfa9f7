"""What every workflow job shares: its log file and the provenance written on its outputs."""

from __future__ import annotations

import contextlib
import errno
import hashlib
import logging
import os
import platform
import shutil
from collections.abc import Iterator, Sequence
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

from selfrepair import __version__

__all__ = [
    "PROVENANCE_KEYS",
    "SAME_RUN_KEYS",
    "SAME_WEIGHTS_KEYS",
    "NoSpaceLeft",
    "checkpoint_folder",
    "checkpoint_weights",
    "hub_revision",
    "logged",
    "missing_provenance",
    "files_digest",
    "model_revision",
    "package_versions",
    "provenance",
    "revision_of",
    "rule_params",
    "run_difference",
    "weights_provenance",
]

log = logging.getLogger("selfrepair")

# Where a model's process_weights job writes its training checkpoints' weights (step<N>)
CHECKPOINT_WEIGHTS = "checkpoints"

PACKAGES = ("torch", "transformer-lens", "transformers", "numpy", "xarray", "zarr")
# What every store records of the run that made it: the rule's run_attrs (Snakemake's
# common.smk), the weights' revision and the package versions. A key every store should carry
# (e.g. the data set's name, split and revision) is added here and to run_attrs; a stage's own
# keys are keyword arguments of provenance().
PROVENANCE_KEYS = (
    "model",
    "model_entry",
    "data",
    "engine",
    "seed",
    "device",
    "dtype",
    "model_revision",
    "versions",
)

# What stores combined into one result (the shards of one quantity, the stores of one job) must
# share: the weights and the config that made them. Not the device (a retried shard may run
# elsewhere), the package versions, a shard's rows or its own error bounds.
SAME_RUN_KEYS = (
    "model",
    "model_entry",
    "model_revision",
    "data",
    "engine",
    "seed",
    "dtype",
    "checkpoint_of",
    "checkpoint_step",
    "checkpoint_revision",
    "task",
    "task_spec",
    "ablation",
    "freeze_ln",
    "metric",
)
# What stores of different kinds that one job reads (shards and the top tokens they were
# measured on, a summary and its shards) must share: the model and its weights.
SAME_WEIGHTS_KEYS = ("model", "model_revision")


class NoSpaceLeft(OSError):
    """A job's disk filled up (ENOSPC): one line naming the folder, the bytes and the fix."""


@contextlib.contextmanager
def logged(path: str | None, job: Any = None) -> Iterator[None]:
    """Send stdout, stderr (tqdm) and logging of a job to its Snakemake log file; a full disk
    (ENOSPC) anywhere in the job, its log included, is re-raised as NoSpaceLeft: one line naming
    the folder written, the bytes the job's outputs take and the fix.

    Args:
        path: the job's log file (snakemake.log[0]); None: no log file.
        job: the `snakemake` object of the job's script (rule, wildcards, output, config), for
            the message's folder and bytes.
    """
    try:
        with _to_log(path):
            yield
    except OSError as err:
        if err.errno != errno.ENOSPC or isinstance(err, NoSpaceLeft):
            raise
        raise NoSpaceLeft(no_space_message(err, job)) from None


@contextlib.contextmanager
def _to_log(path: str | None) -> Iterator[None]:
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


def no_space_message(err: OSError, job: Any = None) -> str:
    """The one line of a job that found its disk full: the folder it wrote (the error's file's,
    else its outputs'), what its outputs take (the onstart estimate's upper bound for the job,
    when the config says) and what is free there, and the fix."""
    from selfrepair.config.storage_check import human

    given = getattr(job, "output", None) or []
    outputs = [str(o) for o in (given.values() if isinstance(given, dict) else given)]
    folder = _written_folder(err, outputs)
    free = _free_bytes(folder)
    need = _job_bytes(job) if job is not None else None
    what = f"{getattr(job, 'rule', 'this')} job"
    needs = f"its outputs take up to {human(need)} ({need:,} bytes)" if need else "it needs more"
    has = f"{human(free)} ({free:,} bytes) is free there" if free is not None else "none is free"
    return (
        f"no space left on device writing {folder} ({what}): {needs} on disk and {has}; free "
        "space on that disk, or run the workflow in a folder on a larger one (snakemake "
        "--directory DIR), then rerun: finished outputs are kept, this job's are not written"
    )


def _written_folder(err: OSError, outputs: list[str]) -> str:
    if err.filename:
        return str(Path(str(err.filename)).absolute().parent)
    if not outputs:
        return str(Path.cwd())
    parents = [str(Path(o).absolute().parent) for o in outputs]
    return os.path.commonpath(parents)


def _free_bytes(folder: str) -> int | None:
    place = Path(folder)
    while not place.exists() and place != place.parent:
        place = place.parent
    try:
        return shutil.disk_usage(place).free
    except OSError:
        return None


def _job_bytes(job: Any) -> int | None:
    """The on-disk estimate of the job's outputs (config.storage.job_bytes), None if unknown."""
    try:
        from selfrepair.config import model_entries
        from selfrepair.config.storage import output_bytes

        config = job.config
        wildcards = dict(job.wildcards.items())
        return output_bytes(config, model_entries(config), job.rule, wildcards, job.output)
    except Exception:  # the message must come whatever the config holds
        return None


def rule_params(smk: Any, *names: str) -> dict[str, Any]:
    """The named params of a Snakemake job, as keyword arguments of its stage (a stage's
    arguments are named as its rule's params)."""
    return {name: smk.params[name] for name in names}


def package_versions() -> dict[str, str]:
    out = {"python": platform.python_version(), "selfrepair": __version__}
    for pkg in PACKAGES:
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            out[pkg] = "not installed"
    return out


def provenance(**extra: Any) -> dict[str, Any]:
    """Attributes recorded on every store: what made it (PROVENANCE_KEYS, given by the stage),
    with which versions. Nothing that changes between reruns (timings go to the job's log)."""
    return {"versions": package_versions(), **extra}


def missing_provenance(attrs: dict[str, Any]) -> list[str]:
    """The PROVENANCE_KEYS a store's attributes lack."""
    return [key for key in PROVENANCE_KEYS if key not in attrs]


WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt")


def files_digest(paths: list[Path]) -> str:
    """sha256:<hex> of the files' names and bytes, in name order."""
    digest = hashlib.sha256()
    for path in sorted(paths):
        digest.update(path.name.encode())
        with path.open("rb") as handle:  # in blocks: Llama-7B's largest shard is 10 GB
            for block in iter(lambda: handle.read(1 << 24), b""):
                digest.update(block)
    return f"sha256:{digest.hexdigest()}"


def model_revision(name: str, checkpoint: str | None) -> str:
    """What exactly was loaded: the hub commit of the cached snapshot, or a hash of a local
    checkpoint's weight files ("unknown" when the hub cache does not say)."""
    if checkpoint is not None:
        weights = [p for p in Path(checkpoint).iterdir() if p.suffix in WEIGHT_SUFFIXES]
        return files_digest(weights) if weights else "unknown"
    from huggingface_hub import try_to_load_from_cache

    from selfrepair.config import ConfigError, official_model_name

    try:
        repo = official_model_name(name)
    except ConfigError:  # loaded some other way (e.g. a model object handed in by a test)
        return "unknown"
    cached = try_to_load_from_cache(repo, "config.json")
    if isinstance(cached, str) and "/snapshots/" in cached:
        return cached.split("/snapshots/")[1].split("/")[0]
    return "unknown"


def hub_revision(name: str, revision: str) -> str:
    """The commit the hub cache resolves a model's revision (e.g. step1000) to ("unknown"
    when the cache does not say)."""
    from huggingface_hub import try_to_load_from_cache

    from selfrepair.config import official_model_name

    cached = try_to_load_from_cache(official_model_name(name), "config.json", revision=revision)
    if isinstance(cached, str) and "/snapshots/" in cached:
        return cached.split("/snapshots/")[1].split("/")[0]
    return "unknown"


def checkpoint_folder(entry: dict[str, Any], model_dir: str | None) -> str | None:
    """The local weights of a model job: the rule's model_dir input, or for a trained model's
    intermediate checkpoint its subfolder (<model_dir>/checkpoints/step<N>)."""
    subdir = (entry.get("checkpoint") or {}).get("subdir")
    if subdir is None or model_dir is None:
        return model_dir
    return str(Path(model_dir) / subdir)


def checkpoint_weights(entry: dict[str, Any], weights: str | None) -> str | None:
    """The processed-weights folder of a model job: the rule's weights input, or for a training
    checkpoint its subfolder (<weights>/checkpoints/step<N>), which its model's process_weights
    job writes beside the model's own."""
    ckpt = entry.get("checkpoint")
    if ckpt is None or weights is None:
        return weights
    return str(Path(weights) / CHECKPOINT_WEIGHTS / f"step{ckpt['step']}")


def weights_provenance(
    entry: dict[str, Any], checkpoint: str | None, attrs: dict[str, Any], **extra: Any
) -> dict[str, Any]:
    """The store attributes of a job on a model's weights: the rule's attrs, the weights'
    revision (a training checkpoint's: its step and hub revision too), then the stage's own.
    Here, not beside the model loading, so that a job that only records them (share_tokens)
    imports neither torch nor TransformerLens.

    Args:
        entry: the model's config entry (a training checkpoint's has `checkpoint`).
        checkpoint: the local weights folder (checkpoint_folder), None for the hub's.
        attrs: the rule's provenance attributes.
        extra: the stage's own attributes.
    """
    ckpt = entry.get("checkpoint")
    if ckpt is None:
        revision = model_revision(entry["name"], checkpoint)
        return provenance(**attrs, model_revision=revision, **extra)
    where = {"checkpoint_of": ckpt["model"], "checkpoint_step": ckpt["step"]}
    if "revision" in ckpt:
        revision = hub_revision(ckpt["model"], ckpt["revision"])
        where["checkpoint_revision"] = ckpt["revision"]
    else:
        revision = model_revision(ckpt["model"], checkpoint)
    return provenance(**attrs, model_revision=revision, **where, **extra)


def revision_of(ds: Any) -> str:
    """The model_revision a store (or shards opened together) records, for the stores made
    from it without loading the model."""
    return str(ds.attrs.get("model_revision", "unknown"))


def run_difference(
    first: dict[str, Any], other: dict[str, Any], keys: Sequence[str] = SAME_RUN_KEYS
) -> str | None:
    """How two stores' provenance attributes say they were made differently (a config's first
    differing entry named), or None: stores that differ are not to be combined. Keys only one
    records are not compared (a store made outside the workflow; a training checkpoint's keys
    come with its own model key, which differs).

    Args:
        first, other: the two stores' attributes.
        keys: the attributes compared (SAME_RUN_KEYS, or SAME_WEIGHTS_KEYS for stores of
            different kinds).
    """
    for key in keys:
        a, b = first.get(key), other.get(key)
        if a == b or key not in first or key not in other:
            continue
        if isinstance(a, dict) and isinstance(b, dict):
            sub = sorted(k for k in a.keys() | b.keys() if a.get(k) != b.get(k))[0]
            key, a, b = f"{key}.{sub}", a.get(sub), b.get(sub)
        return f"{key} {_short(a)} and {_short(b)}"
    return None


def _short(value: Any) -> str:
    """A value in a line: whole up to 80 characters (a sha256 revision is 71)."""
    text = str(value)
    return text if len(text) <= 80 else f"{text[:77]}..."
