"""The tokenizing jobs read a trained tokenizer folder with the `tokenizers` library alone
(selfrepair.data.tokenizer_file): the same ids, pieces, special ids and vocabulary size as
transformers' AutoTokenizer, and AutoTokenizer itself wherever the two could differ."""

from __future__ import annotations

import json
import shutil

import pytest

import selfrepair.data.sources as sc
from selfrepair.data.tokenizer import train_tokenizer
from selfrepair.data.tokenizer_file import FileTokenizer, direct_tokenizer, why_not_direct
from selfrepair.data.tokens import load_tokenizer

TEXTS = [
    "def add(a, b):\n    return a + b\n",
    "  leading spaces, tabs\tand <|endoftext|> inside",
    "naïve café ☃ 日本語 🙂",
    "",
    "It's a test, isn't it ? Yes !",
    "<|endoftext|>",
]


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """The demo's kind of tokenizer: a byte-level BPE trained and saved by data.tokenizer."""
    docs = [d for _, d in zip(range(40), sc.python_stdlib_documents("train"), strict=False)]
    out = tmp_path_factory.mktemp("tok") / "tokenizer"
    train_tokenizer(docs, 400, out)
    return out


def test_the_tokenizers_library_reads_a_trained_folder_as_auto_tokenizer_does(folder):
    from transformers import AutoTokenizer

    auto, direct = AutoTokenizer.from_pretrained(str(folder)), direct_tokenizer(folder)
    assert isinstance(direct, FileTokenizer)
    heldout = sc.python_stdlib_documents("heldout")
    docs = TEXTS + [d for _, d in zip(range(20), heldout, strict=False)]
    expect = auto(docs, add_special_tokens=False, return_attention_mask=False, verbose=False)
    assert direct(docs, add_special_tokens=False)["input_ids"] == expect["input_ids"]
    for text in docs:
        assert direct(text, add_special_tokens=False) == {
            "input_ids": auto(text, add_special_tokens=False)["input_ids"]
        }
    assert [direct.decode([i]) for i in range(len(auto))] == [
        auto.decode([i]) for i in range(len(auto))
    ]
    assert direct.decode([5, 9, 0, 3]) == auto.decode([5, 9, 0, 3])
    got = (direct.bos_token_id, direct.eos_token_id, direct.all_special_ids, len(direct))
    assert got == (auto.bos_token_id, auto.eos_token_id, auto.all_special_ids, len(auto))


def test_load_tokenizer_reads_a_trained_folder_without_transformers(folder):
    tokenizer, source = load_tokenizer({"name": "tiny"}, str(folder))
    assert isinstance(tokenizer, FileTokenizer) and source == str(folder)
    with pytest.raises(ValueError, match="without special tokens"):
        tokenizer("x")


@pytest.mark.parametrize(
    "change, reason",
    [
        (lambda c, t: c.update(tokenizer_class="GPT2Tokenizer"), "tokenizer class"),
        (lambda c, t: c.update(clean_up_tokenization_spaces=True), "clean_up"),
        (lambda c, t: c.update(add_prefix_space=True), "config keys add_prefix_space"),
        (lambda c, t: c.update(sep_token="<sep>"), "not among the added tokens"),
        (lambda c, t: t.update(truncation={"max_length": 8}), "truncation"),
    ],
)
def test_a_folder_transformers_could_read_differently_goes_through_auto_tokenizer(
    folder, tmp_path, change, reason
):
    copy = tmp_path / "tokenizer"
    shutil.copytree(folder, copy)
    cfg = json.loads((copy / "tokenizer_config.json").read_text())
    tok = json.loads((copy / "tokenizer.json").read_text())
    change(cfg, tok)
    (copy / "tokenizer_config.json").write_text(json.dumps(cfg))
    (copy / "tokenizer.json").write_text(json.dumps(tok))
    assert reason in why_not_direct(copy)
    assert direct_tokenizer(copy) is None
