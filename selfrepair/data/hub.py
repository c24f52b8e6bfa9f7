"""Hugging Face data sets as corpus sources: where a `corpus.hub.path` is read from (a local
copy, the hub cache's snapshot, or `datasets.load_dataset` by name), found without the network,
and the text column read from there. The access check of the config (`config.hub`) asks the
same functions, so both agree on what counts as a usable copy.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

__all__ = [
    "datasets_cache_revision",
    "hub_documents",
    "hub_provenance",
    "is_local_path",
    "resolve_hub_dataset",
]


def _is_saved_dataset(path: Path) -> bool:
    return path.is_dir() and (
        (path / "state.json").is_file() or (path / "dataset_dict.json").is_file()
    )


def _hub_snapshot(repo_id: str) -> Path | None:
    """The hub cache's snapshot of a data set repo (what `hf download --repo-type dataset`
    leaves, or an earlier online load), found without the network; None when not cached."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    try:
        folder = Path(snapshot_download(repo_id, repo_type="dataset", local_files_only=True))
    except (LocalEntryNotFoundError, FileNotFoundError, ValueError):
        return None
    # A snapshot holding only the data set card (what `load_dataset` fetches first) or git
    # attributes has no data.
    has_data = any(p.name != "README.md" and not p.name.startswith(".") for p in folder.iterdir())
    return folder if has_data else None


def datasets_cache_revision(repo_id: str) -> str | None:
    """The commit of the newest copy of a hub data set that an online `datasets.load_dataset`
    left in HF_DATASETS_CACHE (<org>___<name>/<config>/<version>/<commit>), or None."""
    import datasets

    org, _, name = repo_id.rpartition("/")
    root = Path(datasets.config.HF_DATASETS_CACHE) / "___".join(filter(None, [org, name]))
    found = [p for p in root.glob("*/*/*") if p.is_dir() and (p / "dataset_info.json").is_file()]
    return max(found, key=lambda p: p.stat().st_mtime).name if found else None


def is_local_path(path: str) -> bool:
    """Whether a `corpus.hub.path` names a local copy (it exists, or is written as a path)
    rather than a hub data set."""
    return Path(path).exists() or path.startswith((".", "/", "~"))


def resolve_hub_dataset(path: str) -> dict:
    """Where a `corpus.hub.path` is read from, without the network: {"kind": "local" (a folder,
    file or save_to_disk folder), "hub_snapshot" (the hub cache's snapshot, with its commit as
    `revision`) or "hub" (datasets.load_dataset by name: online, or offline from the copy an
    online load left in HF_DATASETS_CACHE, whose commit is `revision` when there is one)}."""
    if is_local_path(path):
        return {"kind": "local", "path": str(Path(path).expanduser().resolve())}
    snapshot = _hub_snapshot(path)
    if snapshot is not None:
        return {"kind": "hub_snapshot", "snapshot": str(snapshot), "revision": snapshot.name}
    return {"kind": "hub", "revision": datasets_cache_revision(path)}


def _load_local_dataset(path: str, name: str | None, split: str):
    """A local copy read by `datasets`: a save_to_disk folder, a folder of data files, or one
    data file (.jsonl/.json, .parquet, .csv, .txt)."""
    import datasets

    local = Path(path).expanduser()
    if _is_saved_dataset(local):
        data = datasets.load_from_disk(str(local))
        if isinstance(data, datasets.DatasetDict):
            if split not in data:
                raise ValueError(
                    f"dataset {path!r} has no split {split!r} (splits: {', '.join(data)}): "
                    "set corpus.hub.split to one of them"
                )
            data = data[split]
        return data
    if local.is_file():
        builders = {".jsonl": "json", ".json": "json", ".parquet": "parquet", ".csv": "csv"}
        builder = builders.get(local.suffix, "text")
        return datasets.load_dataset(builder, data_files={split: str(local)}, split=split)
    return datasets.load_dataset(str(local), name, split=split)


def hub_documents(
    path: str, split: str, text_column: str = "text", name: str | None = None
) -> Iterator[str]:
    """The `text_column` of a Hugging Face dataset: a hub name (e.g. NeelNanda/pile-10k, split
    train), read from the hub cache's snapshot when there is one (`hf download` or an earlier
    run; `datasets.load_dataset` with HF_HUB_OFFLINE=1 does not read those), else by
    `datasets.load_dataset` (online, or the copy an online load left in HF_DATASETS_CACHE); or a
    local folder, data file (.jsonl, .parquet, .csv) or `Dataset.save_to_disk` folder. Null texts
    are skipped."""
    import datasets

    where = resolve_hub_dataset(path)
    if where["kind"] == "local":
        data = _load_local_dataset(path, name, split)
    elif where["kind"] == "hub_snapshot":
        data = datasets.load_dataset(where["snapshot"], name, split=split)
    else:
        data = datasets.load_dataset(path, name, split=split)
    columns = list(data.column_names or [])
    if text_column not in columns:
        raise KeyError(
            f"dataset {path!r} has no column {text_column!r} (columns: {', '.join(columns)}): "
            "set corpus.hub.text_column to the column that holds the text"
        )
    for batch in data.select_columns([text_column]).iter(batch_size=256):
        for text in batch[text_column]:
            if text is not None:
                yield text


def hub_provenance(corpus: dict, model: dict, tokenizer_name: str) -> dict:
    """Top-level provenance of a token store: the data set (name, split, revision) for a hub
    corpus and the hub repository of a hub model (its revision is joblog.model_revision's, as on
    every store)."""
    info: dict = {}
    if corpus.get("source") == "hub":
        hub = corpus.get("hub") or {}
        where = resolve_hub_dataset(hub["path"])
        info.update(
            dataset=hub["path"],
            dataset_split=hub.get("split") or "train",
            dataset_revision=where.get("revision"),
        )
    if not model.get("path") and "train" not in model:
        info.update(model_repo=tokenizer_name)
    return info
