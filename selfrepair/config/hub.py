"""Hub access, checked when the workflow starts (onstart): can the Hugging Face hub or the local
cache serve every hub model and data set the run reads? Cheap: file checks, and one connection
attempt only when something is missing. huggingface_hub is imported inside the functions, since
the figure scripts import the config package in an environment without it."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from selfrepair.config.errors import ConfigError
from selfrepair.config.models import official_model_name

__all__ = [
    "PROXY_VARIABLES",
    "WEIGHT_SUFFIXES",
    "check_hub_access",
    "dataset_cached",
    "hub_needs",
    "hub_reachable",
    "model_cached",
]

WEIGHT_SUFFIXES = (".safetensors", ".bin")
PROXY_VARIABLES = ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy")


def _hub_snapshot_files(repo_id: str, repo_type: str, revision: str = "main") -> list[str]:
    """Names of the files in the hub cache's snapshot of a repo (refs/<revision>), [] when
    none."""
    from huggingface_hub import constants

    repo = Path(constants.HF_HUB_CACHE) / f"{repo_type}s--{repo_id.replace('/', '--')}"
    ref = repo / "refs" / revision
    if not ref.is_file():
        return []
    snapshot = repo / "snapshots" / ref.read_text().strip()
    return [p.relative_to(snapshot).as_posix() for p in snapshot.rglob("*") if p.is_file()]


def model_cached(repo_id: str, revision: str | None = None) -> bool:
    """A hub model's snapshot holds what from_pretrained reads: config, weights, tokenizer;
    with a training revision (step1000), also that revision's config and weights (the
    tokenizer and TransformerLens' config come from main)."""
    files = _hub_snapshot_files(repo_id, "model")
    main = (
        "config.json" in files
        and any(f.endswith(WEIGHT_SUFFIXES) for f in files)
        and any(f.startswith("tokenizer") for f in files)
    )
    if revision is None or not main:
        return main
    files = _hub_snapshot_files(repo_id, "model", revision)
    return "config.json" in files and any(f.endswith(WEIGHT_SUFFIXES) for f in files)


def dataset_cached(repo_id: str) -> bool:
    """A hub data set is in the hub cache with data files (`hf download`), or in the datasets
    cache as an online `datasets.load_dataset` leaves it: where the corpus loader would read it
    without the network (corpus.resolve_hub_dataset)."""
    from selfrepair.data.hub import resolve_hub_dataset

    where = resolve_hub_dataset(repo_id)
    return where["kind"] == "hub_snapshot" or where["revision"] is not None


def hub_reachable(endpoint: str, timeout: float = 3.0) -> bool:
    """Whether a TCP connection to the hub endpoint opens within `timeout` seconds (a proxy in
    the environment counts as reachable: the connection would go through it)."""
    import socket
    from urllib.parse import urlparse

    if any(os.environ.get(v) for v in PROXY_VARIABLES):
        return True
    url = urlparse(endpoint)
    try:
        with socket.create_connection(
            (url.hostname, url.port or (443 if url.scheme == "https" else 80)), timeout=timeout
        ):
            return True
    except OSError:
        return False


def hub_needs(config: dict[str, Any], entries: dict[str, dict[str, Any]]) -> list[str]:
    """What this run reads from the Hugging Face hub and the cache lacks: 'model <name>
    (<repo>)' and 'data set <repo>' entries. Local checkpoints, trained models and local corpora
    need nothing."""
    needs = []
    for name, entry in entries.items():
        if "path" not in entry and "train" not in entry:
            repo = official_model_name(name)
            if not model_cached(repo):
                needs.append(f"model {name} ({repo})")
                continue  # its revisions are missing too; the model's line says so
            # training revisions (models[].revisions), each named by its config key
            needs += [
                f"model {name} revision {rev} ({repo}, config key models[{name}].revisions)"
                for rev in entry.get("revisions") or []
                if not model_cached(repo, rev)
            ]
    corpus = config["data"]["corpus"]
    path = (corpus.get("hub") or {}).get("path")
    if corpus.get("source") == "hub" and path:
        from selfrepair.data.hub import is_local_path

        if is_local_path(path):
            if not Path(path).expanduser().exists():
                raise ConfigError(
                    f"config key data.corpus.hub.path: {path!r} does not exist; give a local "
                    "copy (folder, save_to_disk folder or data file) or a hub data set name"
                )
        elif not dataset_cached(path):
            needs.append(f"data set {path}")
    return needs


def check_hub_access(
    config: dict[str, Any],
    entries: dict[str, dict[str, Any]],
    reachable: Callable[[str], bool] = hub_reachable,
) -> None:
    """Stop before any job when a hub model or data set is neither in the local cache nor
    reachable: offline (HF_HUB_OFFLINE) nothing is fetched, and without the network the first
    job would retry connections for a minute. Cheap: file checks, and one connection attempt
    (3 s at most) only when something is missing and the hub is allowed.

    Args:
        config: the validated workflow config.
        entries: its model entries (model_entries).
        reachable: whether the hub endpoint answers (the tests pass a stub).
    """
    from huggingface_hub import constants

    needs = hub_needs(config, entries)
    if not needs:
        return
    offline = constants.HF_HUB_OFFLINE
    if not offline and reachable(constants.ENDPOINT):
        return
    why = (
        "HF_HUB_OFFLINE=1 allows no download"
        if offline
        else f"HF_HUB_OFFLINE is unset and {constants.ENDPOINT} cannot be reached"
    )
    raise ConfigError(
        f"{', '.join(needs)}: not in the Hugging Face cache (HF_HOME={constants.HF_HOME}) and "
        f"{why}; fill the cache (`hf download`, or tools/offline_hub.py for random weights) "
        "or set models / data.corpus to local copies"
    )
