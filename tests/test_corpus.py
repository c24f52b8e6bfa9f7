"""Corpora and packing into rows: the stdlib corpus and its splits, local Hugging Face datasets,
text files, pack_rows' layout and the tokens store."""

from __future__ import annotations

import json

import numpy as np
import pytest

import selfrepair.data.sources as sc
from selfrepair.data.hub import hub_documents
from selfrepair.data.tokenizer import train_tokenizer
from selfrepair.data.tokens import pack_rows
from selfrepair.stages.data import open_tokens, tokenize

TEXTS = [
    "def add(a, b):\n    return a + b\n",
    "The quick brown fox jumps over the lazy dog.",
    "",
    "import os\nprint(os.getcwd())\n",
    "class A:\n    pass\n" * 3,
    "x = [i * i for i in range(10)]\n",
]


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    """A small byte-level BPE (<|endoftext|> id 0) trained on a few stdlib documents."""
    docs = [d for _, d in zip(range(40), sc.python_stdlib_documents("train"), strict=False)]
    return train_tokenizer(docs, 400, tmp_path_factory.mktemp("tok") / "tokenizer")


def stream_of(tokenizer, texts, eos_id):
    out: list[int] = []
    for i, text in enumerate(texts):
        if i:
            out.append(eos_id)
        out += tokenizer(text, add_special_tokens=False)["input_ids"]
    return np.array(out)


def test_stdlib_splits_are_disjoint_deterministic_and_skip_tests():
    keys = sc._stdlib_keys()
    assert list(keys) == sorted(keys)
    paths = [k for k, kind in keys if kind == "file"]
    assert not any(part in sc.STDLIB_SKIP for p in paths for part in p.split("/")[:-1]), (
        "test suites and site-packages are left out"
    )
    assert "os.py" in paths and sc.TOPICS_FILE not in paths
    assert any(kind == "topic" for _, kind in keys)
    splits = {k: sc.split_of(k) for k, _ in keys}
    assert set(splits.values()) == set(sc.SPLITS)
    assert splits == {k: sc.split_of(k) for k, _ in sc._stdlib_keys()}
    heldout = list(sc.python_stdlib_documents("heldout"))
    assert heldout == list(sc.python_stdlib_documents("heldout"))
    assert not set(heldout) & set(sc.python_stdlib_documents("measure"))
    prov = sc.corpus_provenance()
    counts = prov["splits"]
    assert counts["heldout"]["documents"] == len(heldout)
    assert counts["train"]["characters"] > counts["measure"]["characters"] > 0
    assert prov["python_version"] and prov["stdlib_path"]
    json.dumps(prov)  # fit for attributes
    with pytest.raises(ValueError, match="unknown split"):
        next(sc.python_stdlib_documents("validation"))


def test_documents_dispatch_and_split_override():
    stdlib = {"source": "python_stdlib", "split": "heldout"}
    first = next(sc.documents(stdlib))
    assert first == next(sc.python_stdlib_documents("heldout"))
    assert next(sc.documents(stdlib, "train")) == next(sc.python_stdlib_documents("train"))
    assert next(sc.documents({"source": "python_stdlib"})) == next(
        sc.python_stdlib_documents("measure")
    )
    assert sc.describe_corpus(stdlib)["split"] == "heldout"
    with pytest.raises(ValueError, match="unknown corpus source"):
        sc.documents({"source": "ftp"})
    with pytest.raises(ValueError, match="corpus.files"):
        sc.documents({"source": "text_files", "files": []})
    with pytest.raises(ValueError, match="corpus.hub.path"):
        sc.documents({"source": "hub", "hub": {}})


def test_pack_rows_layout(tokenizer):
    bos, eos = 7, 0  # distinct, to see which is where
    seq_len, n_rows = 9, 5
    rows = pack_rows(TEXTS, tokenizer, seq_len, n_rows, bos, eos)
    assert rows.dtype == np.int32 and rows.shape == (n_rows, seq_len)
    assert (rows[:, 0] == bos).all()
    stream = stream_of(tokenizer, TEXTS, eos)
    np.testing.assert_array_equal(rows[:, 1:].ravel(), stream[: n_rows * (seq_len - 1)])
    # every complete row when n_rows is None; the tail is dropped
    every = pack_rows(TEXTS, tokenizer, seq_len, None, bos, eos)
    assert len(every) == len(stream) // (seq_len - 1)
    np.testing.assert_array_equal(every[:n_rows], rows)
    # exactly as many tokens as needed is enough; one more row is not
    exact = len(stream) // (seq_len - 1)
    assert len(pack_rows(TEXTS, tokenizer, seq_len, exact, bos, eos)) == exact
    with pytest.raises(ValueError, match="lower data.n_tokens or give a larger corpus"):
        pack_rows(TEXTS, tokenizer, seq_len, exact + 1, bos, eos)
    with pytest.raises(ValueError, match="seq_len"):
        pack_rows(TEXTS, tokenizer, 1, 3, bos, eos)


def test_pack_rows_stops_reading_early(tokenizer):
    read = 0

    def docs():
        nonlocal read
        for i in range(10_000):
            read += 1
            yield f"value_{i} = {i} * 2\n"

    rows = pack_rows(docs(), tokenizer, 16, 4, 0, 0)
    assert rows.shape == (4, 16)
    assert read < 200


def write_jsonl(path, records):
    path.write_text("".join(json.dumps(r) + "\n" for r in records))


@pytest.fixture
def offline_datasets(tmp_path, monkeypatch):
    import datasets

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "hf-cache")
    return tmp_path


def test_hub_documents_local_folder(offline_datasets):
    folder = offline_datasets / "local-ds"
    folder.mkdir()
    texts = [t for t in TEXTS if t]
    write_jsonl(folder / "train.jsonl", [{"text": t, "meta": i} for i, t in enumerate(texts)])
    assert list(hub_documents(str(folder), "train")) == texts
    corpus = {"source": "hub", "split": "measure", "hub": {"path": str(folder), "split": "train"}}
    # corpus.split selects python_stdlib documents only: hub corpora are used whole, in order
    assert list(sc.documents(corpus)) == texts
    assert sc.describe_corpus(corpus)["hub"]["path"] == str(folder)
    with pytest.raises(KeyError, match="corpus.hub.text_column"):
        list(hub_documents(str(folder), "train", text_column="content"))


def test_hub_documents_parquet_and_saved_dataset(offline_datasets):
    import datasets

    texts = [t for t in TEXTS if t]
    data = datasets.Dataset.from_dict({"content": texts})
    parquet = offline_datasets / "pq"
    parquet.mkdir()
    data.to_parquet(str(parquet / "train.parquet"))
    assert list(hub_documents(str(parquet), "train", text_column="content")) == texts
    saved = offline_datasets / "saved"
    datasets.DatasetDict({"train": data}).save_to_disk(str(saved))
    assert list(hub_documents(str(saved), "train", "content")) == texts
    with pytest.raises(ValueError, match="corpus.hub.split"):
        list(hub_documents(str(saved), "validation", "content"))


def test_text_file_documents(tmp_path):
    plain = tmp_path / "a.txt"
    plain.write_text("first document\nstill first\n")
    lines = tmp_path / "b.jsonl"
    write_jsonl(lines, [{"text": "second"}, {"text": "third", "id": 3}])
    docs = list(sc.text_file_documents([str(plain), str(lines)]))
    assert docs == ["first document\nstill first\n", "second", "third"]
    corpus = {"source": "text_files", "files": [str(plain), str(lines)]}
    assert list(sc.documents(corpus)) == docs
    # a split of a text corpus (demo training on own data) is by hash of the text
    parts = [list(sc.documents(corpus, s)) for s in sc.SPLITS]
    assert sorted(sum(parts, [])) == sorted(docs)
    bad = tmp_path / "bad.jsonl"
    write_jsonl(bad, [{"text": "ok"}, {"body": "no text"}])
    with pytest.raises(ValueError, match="bad.jsonl:2"):
        list(sc.text_file_documents([str(bad)]))
    with pytest.raises(FileNotFoundError, match="corpus.files"):
        list(sc.text_file_documents([str(tmp_path / "missing.txt")]))


FIX = r"corpus.files takes UTF-8 text only: convert it \(e.g. iconv -f latin1 -t utf-8\) or remove it$"


@pytest.mark.parametrize(
    "name, content, expected",
    [
        (
            "broken.jsonl",
            b'{"text": "ok"}\n\n{"text": "cut\n',
            r"^corpus file .*broken.jsonl:3 is not JSON \(Unterminated string .*, column 10\): "
            r"each line of a .jsonl corpus file must be an object like",
        ),
        (
            "latin1.jsonl",
            b'{"text": "ok"}\n{"text": "caf\xe9"}\n',
            r"^corpus file .*latin1.jsonl:2 is not UTF-8 text \(byte 0xe9\); " + FIX,
        ),
        (
            "latin1.txt",
            "line one\nna\u00efve\n".encode("latin-1"),
            r"^corpus file .*latin1.txt:2 is not UTF-8 text \(byte 0xef\); " + FIX,
        ),
        (
            "image.bin",
            b"\x89PNG\r\n\x1a\n\x00\x00",
            r"^corpus file .*image.bin:1 is not UTF-8 text \(byte 0x89\); " + FIX,
        ),
        (
            "nul.txt",
            b"text\nmore\x00\x00\x01",
            r"^corpus file .*nul.txt:2 holds NUL bytes, so it is binary, not text; " + FIX,
        ),
    ],
)
def test_text_files_that_are_not_utf8_text_are_refused_naming_file_and_line(
    tmp_path, name, content, expected
):
    bad = tmp_path / name
    bad.write_bytes(content)
    with pytest.raises(ValueError, match=expected) as info:
        list(sc.text_file_documents([str(bad)]))
    assert "\n" not in str(info.value)


def test_text_files_keep_text_mode_newlines(tmp_path):
    crlf = tmp_path / "crlf.txt"
    crlf.write_bytes("caf\u00e9\r\nold mac\rend".encode())
    assert list(sc.text_file_documents([str(crlf)])) == ["caf\u00e9\nold mac\nend"]


def test_tokenize_to_zarr(tokenizer, tmp_path):
    tok_dir = tmp_path / "tokdir"
    tokenizer.save_pretrained(str(tok_dir))
    texts = tmp_path / "docs.jsonl"
    write_jsonl(texts, [{"text": t} for t in TEXTS * 4])
    corpus = {"source": "text_files", "files": [str(texts)]}
    out = tmp_path / "tokens.zarr"
    model = {"name": "tiny", "path": str(tok_dir)}
    attrs = tokenize(str(out), corpus, model, 12, 10, 4, seed=None)
    rows, stored = open_tokens(str(out))
    expect = pack_rows(sc.documents(corpus), tokenizer, 12, 10, 0, 0)
    np.testing.assert_array_equal(rows, expect)
    assert rows.dtype == np.int32
    assert stored["seq_len"] == 12 and stored["bos_id"] == 0 and stored["eos_id"] == 0
    assert stored["tokenizer"] == str(tok_dir) and stored["corpus"]["source"] == "text_files"
    assert attrs["n_tokens"] == 120
    import xarray as xr

    assert xr.open_zarr(out).tokens.encoding["chunks"] == (4, 12)
    # a seed permutes the same rows
    tokenize(str(out), corpus, model, 12, 10, 4, seed=3)
    shuffled, stored = open_tokens(str(out))
    assert sorted(map(tuple, shuffled)) == sorted(map(tuple, expect))
    assert not (shuffled == expect).all() and stored["seed"] == 3
    assert [p.name for p in tmp_path.iterdir() if "tmp" in p.name] == []


def test_hub_documents_local_copies_of_the_pile(offline_datasets):
    """The three local forms config/README.md names for a copy of the Pile (corpus.hub.path):
    a folder of data files, a save_to_disk folder, a single .jsonl file; the `meta` column of
    the real data set rides along unread."""
    import datasets

    texts = [t for t in TEXTS if t]
    records = [{"text": t, "meta": {"pile_set_name": "Github"}} for t in texts]
    folder = offline_datasets / "pile-folder"
    folder.mkdir()
    write_jsonl(folder / "train.jsonl", records)
    single = offline_datasets / "pile.jsonl"
    write_jsonl(single, records)
    saved = offline_datasets / "pile-saved"
    datasets.Dataset.from_list(records).save_to_disk(str(saved))
    for path in (folder, saved, single):
        corpus = {"source": "hub", "hub": {"path": str(path), "split": "train"}}
        assert list(sc.documents(corpus)) == texts, path
        assert sc.describe_corpus(corpus)["hub"]["kind"] == "local"
