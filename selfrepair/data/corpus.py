"""Text corpora and their packing into rows of tokens, as the paper (and TransformerLens'
`tokenize_and_concatenate`) does: documents tokenized without special tokens, joined by EOS into
one stream, cut into pieces of seq_len - 1 tokens, each row starting with BOS.

Sources (the `corpus` dict of the config, dispatched by `documents`):
- "python_stdlib": an offline code-and-prose corpus, the Python standard library's own sources
  plus the prose of `pydoc_data/topics.py`, split by a stable hash into train / heldout / measure,
  so the demo model is never measured or evaluated on its training text;
- "hub": a Hugging Face dataset (the paper's `NeelNanda/pile-10k`, split train) or a local
  dataset folder that `datasets.load_dataset` reads (.jsonl, .parquet, ...);
- "text_files": plain text files (one document each) or .jsonl files (one document a line).
"""

from __future__ import annotations

import functools
import hashlib
import importlib.util
import json
import os
import platform
import sysconfig
from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np

SPLITS = ("train", "heldout", "measure")
SOURCES = ("python_stdlib", "hub", "text_files")
# Path components never read from the standard library: its test suites, installed packages.
STDLIB_SKIP = {"test", "tests", "idle_test", "site-packages", "dist-packages", "__pycache__"}
TOPICS_FILE = "pydoc_data/topics.py"  # read as prose (its dict values), not as code
TOKENS_VARIABLE = "tokens"


def split_of(key: str) -> str:
    """The split of a document, by sha1 of its key mod 20: 0 heldout, 1-4 measure, else train."""
    bucket = int(hashlib.sha1(key.encode("utf-8")).hexdigest(), 16) % 20
    return "heldout" if bucket == 0 else "measure" if bucket <= 4 else "train"


def _check_split(split: str) -> None:
    if split not in (*SPLITS, "all"):
        raise ValueError(f"unknown split {split!r}: choose one of {', '.join(SPLITS)} or all")


def _stdlib_root() -> Path:
    return Path(sysconfig.get_paths()["stdlib"])


@functools.lru_cache(maxsize=1)
def _stdlib_keys() -> tuple[tuple[str, str], ...]:
    """(key, kind) of every stdlib document in order: kind 'file' (key = relative path) or
    'topic' (key = pydoc_data/topics/<topic>). Sorted by key."""
    root = _stdlib_root()
    keys = []
    for path in root.rglob("*.py"):
        rel = path.relative_to(root)
        if STDLIB_SKIP.intersection(rel.parts[:-1]) or rel.as_posix() == TOPICS_FILE:
            continue
        keys.append((rel.as_posix(), "file"))
    keys.extend((f"pydoc_data/topics/{name}", "topic") for name in _pydoc_topics())
    return tuple(sorted(keys))


@functools.lru_cache(maxsize=1)
def _pydoc_topics() -> dict[str, str]:
    path = _stdlib_root() / TOPICS_FILE
    if not path.is_file():
        return {}
    spec = importlib.util.spec_from_file_location("_selfrepair_pydoc_topics", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return dict(module.topics)


def _stdlib_text(key: str, kind: str) -> str:
    if kind == "topic":
        return _pydoc_topics()[key.rsplit("/", 1)[1]]
    return (_stdlib_root() / key).read_bytes().decode("utf-8", errors="replace")


def python_stdlib_documents(split: str) -> Iterator[str]:
    """The Python standard library's .py sources (no test suites) and the pydoc topics' prose,
    in sorted order of path / topic key, restricted to one split ('train', 'heldout',
    'measure') or 'all'. Whitespace-only files are left out."""
    _check_split(split)
    for key, kind in _stdlib_keys():
        if split != "all" and split_of(key) != split:
            continue
        text = _stdlib_text(key, kind)
        if text.strip():
            yield text


@functools.lru_cache(maxsize=1)
def corpus_provenance() -> dict:
    """Where the python_stdlib corpus comes from and how large each split is."""
    counts = {s: {"documents": 0, "characters": 0} for s in SPLITS}
    for key, kind in _stdlib_keys():
        text = _stdlib_text(key, kind)
        if text.strip():
            count = counts[split_of(key)]
            count["documents"] += 1
            count["characters"] += len(text)
    return {
        "source": "python_stdlib",
        "python_version": platform.python_version(),
        "python_implementation": platform.python_implementation(),
        "stdlib_path": str(_stdlib_root()),
        "split_rule": "sha1(relative path or pydoc_data/topics/<topic>) % 20: "
        "0 heldout, 1-4 measure, 5-19 train",
        "splits": counts,
    }


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


def text_file_documents(paths: list[str]) -> Iterator[str]:
    """Documents from local files, in the order given: a .jsonl file gives one document a line
    (its 'text' field), any other file is one document. Every file must be UTF-8 text: a file
    that is not (Latin-1, binary) stops the job naming the file, the line and the fix, rather than
    being tokenized as replacement characters."""
    for path in paths:
        file = Path(path)
        if not file.is_file():
            raise FileNotFoundError(f"corpus file {path!r} does not exist: check corpus.files")
        if file.suffix == ".jsonl":
            yield from _jsonl_texts(path)
        else:
            # newlines as text-mode reading gives them (\r\n and \r become \n)
            text = _utf8_text(path, file.read_bytes())
            yield text.replace("\r\n", "\n").replace("\r", "\n")


NOT_TEXT_FIX = (
    "corpus.files takes UTF-8 text only: convert it (e.g. iconv -f latin1 -t utf-8) or remove it"
)


def _utf8_text(path: str, raw: bytes, line: int | None = None) -> str:
    """raw decoded as UTF-8; ValueError naming the file (and line) when it is not UTF-8 text.

    Args:
        path: the file, for the message.
        raw: its bytes (one line of a .jsonl file, or the whole file).
        line: the 1-based line of raw in the file, or None for a whole file.
    """
    where = f"{path}:{line}" if line is not None else path
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as err:
        if line is None:
            line = raw.count(b"\n", 0, err.start) + 1
            where = f"{path}:{line}"
        raise ValueError(
            f"corpus file {where} is not UTF-8 text (byte 0x{raw[err.start]:02x}); {NOT_TEXT_FIX}"
        ) from None
    if "\x00" in text:  # valid UTF-8 but binary: text files never hold NUL
        line = (line or 1) + text.count("\n", 0, text.index("\x00"))
        raise ValueError(
            f"corpus file {path}:{line} holds NUL bytes, so it is binary, not text; {NOT_TEXT_FIX}"
        )
    return text


def _jsonl_texts(path: str) -> Iterator[str]:
    """The 'text' field of every line of a .jsonl file; ValueError naming file:line otherwise."""
    with open(path, "rb") as lines:
        for number, raw in enumerate(lines, 1):
            line = _utf8_text(path, raw, number)
            if not line.strip():
                continue
            try:
                record = json.loads(line.rstrip("\r\n"))
            except json.JSONDecodeError as err:
                raise ValueError(
                    f"corpus file {path}:{number} is not JSON ({err.msg}, column {err.colno}): "
                    'each line of a .jsonl corpus file must be an object like {"text": "..."}'
                ) from None
            if not isinstance(record, dict) or not isinstance(record.get("text"), str):
                raise ValueError(
                    f"{path}:{number} has no string 'text' field: each line of a .jsonl "
                    'corpus file must be an object like {"text": "..."}'
                )
            yield record["text"]


def _hash_split(docs: Iterable[str], split: str) -> Iterator[str]:
    """The documents of one split, keyed by the sha1 of their text; 'all' keeps every one."""
    _check_split(split)
    for text in docs:
        if split == "all" or split_of(text) == split:
            yield text


def _split(corpus: dict, split_override: str | None) -> str:
    if split_override:
        return split_override
    if corpus.get("source", "python_stdlib") == "python_stdlib":
        return corpus.get("split") or "measure"
    return "all"


def documents(corpus: dict, split_override: str | None = None) -> Iterator[str]:
    """The documents a `corpus` config dict names.

    corpus = {"source": "python_stdlib" | "hub" | "text_files", "split": ...,
              "hub": {"path", "split", "text_column", "name"}, "files": [...]}

    Documents are split into 'train', 'heldout' and 'measure' by a stable hash (of the path for
    python_stdlib, of the text otherwise). `corpus["split"]` (default 'measure') selects a split
    of python_stdlib only: hub and text_files corpora give all their documents, in order, as the
    paper measures on all of pile-10k. `split_override` selects a split of any source (the
    demo training uses 'train' and 'heldout'). `hub.split` is the dataset's own split."""
    source = corpus.get("source", "python_stdlib")
    split = _split(corpus, split_override)
    if source == "python_stdlib":
        return python_stdlib_documents(split)
    if source == "hub":
        hub = corpus.get("hub") or {}
        if not hub.get("path"):
            raise ValueError("corpus.source is hub but corpus.hub.path is not set")
        docs = hub_documents(
            hub["path"],
            hub.get("split") or "train",
            hub.get("text_column") or "text",
            hub.get("name"),
        )
        return _hash_split(docs, split)
    if source == "text_files":
        files = corpus.get("files") or []
        if not files:
            raise ValueError("corpus.source is text_files but corpus.files is empty")
        return _hash_split(text_file_documents([str(f) for f in files]), split)
    raise ValueError(f"unknown corpus source {source!r}: choose one of {', '.join(SOURCES)}")


def describe_corpus(corpus: dict, split_override: str | None = None) -> dict:
    """JSON-serialisable provenance of a corpus config, for the attributes of outputs."""
    source = corpus.get("source", "python_stdlib")
    split = _split(corpus, split_override)
    if source == "python_stdlib":
        return {**corpus_provenance(), "split": split}
    info: dict = {"source": source, "split": split}
    if source == "hub":
        import datasets

        hub = corpus.get("hub") or {}
        info["hub"] = {
            "path": hub.get("path"),
            "name": hub.get("name"),
            "split": hub.get("split") or "train",
            "text_column": hub.get("text_column") or "text",
        }
        if hub.get("path"):
            info["hub"].update(resolve_hub_dataset(hub["path"]))
        info["datasets_version"] = datasets.__version__
    elif source == "text_files":
        info["files"] = [
            {"path": str(f), "bytes": os.path.getsize(f)} if os.path.exists(f) else str(f)
            for f in corpus.get("files") or []
        ]
    if split != "all":
        info["split_rule"] = "sha1(document text) % 20: 0 heldout, 1-4 measure, 5-19 train"
    return info


def _encode(tokenizer, texts: list[str]) -> list[list[int]]:
    """Batched fast encoding, no special tokens, no too-long-sequence warnings."""
    return tokenizer(texts, add_special_tokens=False, return_attention_mask=False, verbose=False)[
        "input_ids"
    ]


def _batches(docs: Iterable[str], max_docs: int = 64, max_chars: int = 1 << 21):
    batch: list[str] = []
    chars = 0
    for text in docs:
        batch.append(text)
        chars += len(text)
        if len(batch) >= max_docs or chars >= max_chars:
            yield batch
            batch, chars = [], 0
    if batch:
        yield batch


def pack_rows(
    documents: Iterable[str],
    tokenizer,
    seq_len: int,
    n_rows: int | None,
    bos_id: int,
    eos_id: int,
) -> np.ndarray:
    """Rows [n_rows, seq_len] (int32), each BOS followed by the next seq_len - 1 tokens of the
    stream doc_0 EOS doc_1 EOS doc_2 ... (documents tokenized without special tokens).

    Documents are read and tokenized in batches only until n_rows rows are full. n_rows=None
    packs every complete row the documents give (the incomplete tail is dropped). Too few
    tokens for n_rows rows raise ValueError."""
    if seq_len < 2:
        raise ValueError(f"seq_len must be at least 2 (BOS and one token), got {seq_len}")
    if n_rows is not None and n_rows < 1:
        raise ValueError(f"n_rows must be positive, got {n_rows}")
    piece = seq_len - 1
    need = None if n_rows is None else n_rows * piece
    chunks: list[np.ndarray] = []
    have = 0
    first = True
    eos = np.array([eos_id], dtype=np.int64)
    for batch in _batches(documents):
        for ids in _encode(tokenizer, batch):
            if not first:
                chunks.append(eos)
                have += 1
            first = False
            chunks.append(np.asarray(ids, dtype=np.int64))
            have += len(ids)
            if need is not None and have >= need:
                break
        if need is not None and have >= need:
            break
    if need is None:
        need = (have // piece) * piece
        if need == 0:
            raise ValueError(
                f"the corpus gave {have} tokens, fewer than one row of {seq_len} tokens needs "
                f"({piece} after BOS): give a larger corpus"
            )
    elif have < need:
        raise ValueError(
            f"the corpus gave {have} tokens but {n_rows} rows of {seq_len} tokens need {need} "
            f"({piece} per row after BOS): lower data.n_tokens or give a larger corpus"
        )
    stream = np.concatenate(chunks)[:need] if chunks else np.zeros(0, dtype=np.int64)
    if stream.size and (stream.min() < 0 or stream.max() > np.iinfo(np.int32).max):
        raise ValueError("token ids do not fit in int32")
    body = stream.reshape(-1, piece)
    rows = np.empty((body.shape[0], seq_len), dtype=np.int32)
    rows[:, 0] = bos_id
    rows[:, 1:] = body
    return rows


def special_ids(tokenizer) -> tuple[int, int]:
    """(bos_id, eos_id) of a tokenizer; a tokenizer without BOS uses its EOS (as GPT-2 does)."""
    eos = tokenizer.eos_token_id
    bos = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else eos
    if bos is None or eos is None:
        raise ValueError(
            f"tokenizer {getattr(tokenizer, 'name_or_path', '')!r} has neither BOS nor EOS: "
            "rows need both (documents are joined by EOS, rows start with BOS)"
        )
    return int(bos), int(eos)


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


def load_tokenizer(model: dict, directory: str | None = None):
    """The tokenizer of a model config {name, path}: from `directory` (a tokenizer or checkpoint
    folder) when given, else from the model's local `path`, else the Hugging Face name that
    TransformerLens uses for `name` (e.g. pythia-160m -> EleutherAI/pythia-160m)."""
    from transformers import AutoTokenizer

    if directory:
        return AutoTokenizer.from_pretrained(str(directory)), str(directory)
    if model.get("path"):
        return AutoTokenizer.from_pretrained(str(model["path"])), str(model["path"])
    from selfrepair.config import official_model_name

    official = official_model_name(model["name"])  # unknown names fail naming the fix
    return AutoTokenizer.from_pretrained(official), official


def tokenize_to_zarr(
    out: str,
    corpus: dict,
    model: dict,
    seq_len: int,
    n_rows: int,
    shard_rows: int,
    seed: int | None = None,
    tokenizer_dir: str | None = None,
    attrs: dict | None = None,
) -> dict:
    """Pack n_rows rows of seq_len tokens of a corpus with a model's tokenizer into a Zarr store
    `out`: variable `tokens` (int32, dims row, tok), chunked by shard_rows rows. The rows are the
    first n_rows of the corpus stream; with a seed their order is permuted (the set of rows, and
    so every token measured, does not depend on it; only which rows sit next to each other).
    Written next to `out` and renamed into place. Returns the store's attributes: `attrs` (the
    run's provenance, joblog.PROVENANCE_KEYS) with the model's revision and the packing's."""
    import xarray as xr

    from selfrepair.stages.joblog import model_revision, provenance
    from selfrepair.stages.store import write_zarr

    tokenizer, tokenizer_name = load_tokenizer(model, tokenizer_dir)
    bos_id, eos_id = special_ids(tokenizer)
    rows = pack_rows(documents(corpus), tokenizer, seq_len, n_rows, bos_id, eos_id)
    if seed is not None:
        rows = rows[np.random.default_rng(seed).permutation(len(rows))]
    own = dict(
        model_revision=model_revision(model.get("name"), tokenizer_dir),
        corpus=describe_corpus(corpus),
        model=model.get("name"),
        **hub_provenance(corpus, model, tokenizer_name),
        tokenizer=tokenizer_name,
        vocab_size=len(tokenizer),
        seq_len=seq_len,
        n_rows=n_rows,
        n_tokens=int(rows.size),
        bos_id=bos_id,
        eos_id=eos_id,
        row_order="corpus order" if seed is None else f"permuted with seed {seed}",
        seed=seed,
        packing="documents tokenized without special tokens, joined by EOS, cut into pieces "
        "of seq_len - 1 tokens, BOS prepended to each row",
    )
    attrs = provenance(**{**(attrs or {}), **own})
    data = xr.Dataset({TOKENS_VARIABLE: (("row", "tok"), rows)}, attrs=attrs)
    write_zarr(data, out, chunks={"row": shard_rows})
    return attrs


def open_tokens(path: str) -> tuple[np.ndarray, dict]:
    """(tokens [row, tok] int32, attributes) of a store written by tokenize_to_zarr."""
    from selfrepair.stages.store import open_zarr

    data = open_zarr(path)
    return data[TOKENS_VARIABLE].values, dict(data.attrs)
