"""The demo tokenizer and models, their training, checkpoints, and how local Hugging Face
checkpoints load into TransformerLens (the offline stand-in for the hub loading path)."""

from __future__ import annotations

import json
import math
from collections import Counter

import numpy as np
import pytest
import torch

import selfrepair.data.training as tr
import selfrepair.stages.data as stage
from selfrepair.data.sources import python_stdlib_documents
from selfrepair.data.tokenizer import SPECIAL, train_tokenizer
from selfrepair.data.tokens import pack_rows
from selfrepair.models.builders import build_model
from selfrepair.models.loading import load_local_checkpoint

SEQ = 32
pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def docs():
    return [d for _, d in zip(range(60), python_stdlib_documents("train"), strict=False)]


@pytest.fixture(scope="module")
def tokenizer(docs, tmp_path_factory):
    return train_tokenizer(docs, 512, tmp_path_factory.mktemp("tok") / "tokenizer")


@pytest.fixture(scope="module")
def rows(docs, tokenizer):
    train = pack_rows(docs[:50], tokenizer, SEQ, 400, 0, 0)
    heldout = pack_rows(docs[50:], tokenizer, SEQ, 24, 0, 0)
    return train, heldout


def test_tokenizer_round_trip_and_reload(tokenizer, docs, tmp_path, monkeypatch):
    from transformers import AutoTokenizer

    assert tokenizer.bos_token_id == tokenizer.eos_token_id == tokenizer.pad_token_id == 0
    assert tokenizer.convert_ids_to_tokens(0) == SPECIAL
    assert len(tokenizer) == 512
    text = "def naïve(x):\n\treturn x ** 2  # ünïcode, 中文, emoji 🐍\n"
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    assert tokenizer.decode(ids) == text
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    path = tmp_path / "saved"
    tokenizer.save_pretrained(str(path))
    again = AutoTokenizer.from_pretrained(str(path))
    assert again(text, add_special_tokens=False)["input_ids"] == ids
    assert again.bos_token_id == again.eos_token_id == 0
    # training is deterministic
    other = train_tokenizer(docs, 512, tmp_path / "other")
    assert other.get_vocab() == tokenizer.get_vocab()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["other", "saved"]


def test_build_model_families():
    gpt2 = build_model("gpt2", 300, 2, 32, 4, SEQ)
    assert gpt2.config.n_positions == SEQ and gpt2.config.n_ctx == SEQ
    tied = gpt2.get_output_embeddings().weight, gpt2.get_input_embeddings().weight
    assert tied[0].data_ptr() == tied[1].data_ptr()
    neox = build_model("pythia", 300, 2, 32, 4, SEQ, d_mlp=64, seed=1)
    assert neox.config.use_parallel_residual
    assert neox.config.intermediate_size == 64
    untied = neox.get_output_embeddings().weight, neox.get_input_embeddings().weight
    assert untied[0].data_ptr() != untied[1].data_ptr()
    assert neox.config.rope_parameters["partial_rotary_factor"] == 0.25
    again = build_model("pythia", 300, 2, 32, 4, SEQ, d_mlp=64, seed=1)
    for a, b in zip(neox.parameters(), again.parameters(), strict=True):
        assert torch.equal(a, b)
    with pytest.raises(ValueError, match="unknown arch"):
        build_model("bert", 300, 2, 32, 4, SEQ)
    with pytest.raises(ValueError, match="d_mlp"):
        build_model("gpt2", 300, 2, 32, 4, SEQ, d_mlp=100)


def test_a_tied_pythia_model_trains_saves_and_loads_into_transformer_lens(
    tokenizer, rows, tmp_path
):
    """tie_embeddings: a Pythia model whose unembedding is its embedding, one tensor through
    training, saved and loaded into TransformerLens with the same centred logits; refused for
    GPT-2, which is always tied."""
    train, heldout = rows
    model = build_model("pythia", len(tokenizer), 2, 32, 4, SEQ, seed=0, tie_embeddings=True)
    assert model.config.tie_word_embeddings
    out_w, in_w = model.get_output_embeddings().weight, model.get_input_embeddings().weight
    assert out_w.data_ptr() == in_w.data_ptr()
    metrics = tr.train_causal_lm(
        model, train, heldout, steps=5, batch_size=8, lr=5e-3, seed=0, progress=False
    )
    assert torch.equal(model.get_output_embeddings().weight, in_w) and not torch.equal(
        in_w, build_model("pythia", len(tokenizer), 2, 32, 4, SEQ, seed=0).gpt_neox.embed_in.weight
    )
    out = tmp_path / "ckpt"
    out.mkdir()
    tr.save_checkpoint(model, tokenizer, metrics, out)
    hooked = load_local_checkpoint(str(out))
    assert_same_centred_logits(model, hooked, torch.as_tensor(heldout[:3], dtype=torch.long))
    with pytest.raises(ValueError, match="always tied"):
        build_model("gpt2", 300, 2, 32, 4, SEQ, tie_embeddings=True)


def test_training_lowers_heldout_loss_deterministically(tokenizer, rows):
    train, heldout = rows
    runs = []
    for _ in range(2):
        model = build_model("pythia", len(tokenizer), 2, 32, 4, SEQ, seed=0)
        metrics = tr.train_causal_lm(
            model, train, heldout, steps=60, batch_size=8, lr=5e-3, seed=0, progress=False
        )
        runs.append((metrics, model))
    (m1, model1), (m2, model2) = runs
    assert m1["uniform_loss"] == pytest.approx(math.log(len(tokenizer)))
    assert m1["initial_heldout_loss"] == pytest.approx(m1["uniform_loss"], abs=0.3)
    assert m1["heldout_loss"] < m1["initial_heldout_loss"] - 0.5
    assert m1["tokens_seen"] == 60 * 8 * (SEQ - 1) and m1["steps"] == 60
    assert m1["heldout_loss"] == m2["heldout_loss"] and m1["train_loss"] == m2["train_loss"]
    for a, b in zip(model1.parameters(), model2.parameters(), strict=True):
        assert torch.equal(a, b)
    assert tr.evaluate_loss(model1, heldout) == pytest.approx(m1["heldout_loss"])


def test_checkpoint_loads_into_transformer_lens(tokenizer, rows, tmp_path):
    train, heldout = rows
    model = build_model("gpt2", len(tokenizer), 2, 32, 4, SEQ, seed=0)
    metrics = tr.train_causal_lm(
        model, train, heldout, steps=5, batch_size=8, lr=5e-3, seed=0, progress=False
    )
    out = tmp_path / "ckpt"
    out.mkdir()
    (out / "stale").write_text("an older checkpoint is replaced whole")
    tr.save_checkpoint(model, tokenizer, metrics, out)
    names = {p.name for p in out.iterdir()}
    assert {"config.json", "model.safetensors", "tokenizer.json", "training.json"} <= names
    assert "stale" not in names and [p.name for p in tmp_path.iterdir()] == ["ckpt"]
    record = json.loads((out / "training.json").read_text())
    assert record["heldout_loss"] == metrics["heldout_loss"] and "versions" in record
    hooked = load_local_checkpoint(str(out))
    assert hooked.tokenizer is not None and hooked.cfg.d_vocab == len(tokenizer)
    tokens = torch.as_tensor(heldout[:3], dtype=torch.long)
    assert_same_centred_logits(model, hooked, tokens)


def assert_same_centred_logits(hf_model, hooked, tokens, atol=1e-4):
    hf_model.eval()
    with torch.no_grad():
        ref = hf_model(tokens).logits.float()
        got = hooked(tokens).float()
    ref = ref - ref.mean(-1, keepdim=True)
    got = got - got.mean(-1, keepdim=True)
    assert got.shape == ref.shape
    torch.testing.assert_close(got, ref, atol=atol, rtol=0)


def random_hf_model(family: str, vocab: int = 101):
    from transformers import (
        GPT2Config,
        GPT2LMHeadModel,
        GPTNeoXConfig,
        GPTNeoXForCausalLM,
        LlamaConfig,
        LlamaForCausalLM,
    )

    torch.manual_seed(0)
    if family == "gpt2":
        model = GPT2LMHeadModel(
            GPT2Config(vocab_size=vocab, n_positions=24, n_embd=32, n_layer=2, n_head=4)
        )
    elif family == "pythia":
        model = GPTNeoXForCausalLM(
            GPTNeoXConfig(
                vocab_size=vocab,
                max_position_embeddings=24,
                hidden_size=32,
                num_hidden_layers=2,
                num_attention_heads=4,
                intermediate_size=64,
                rotary_pct=0.25,
                use_parallel_residual=True,
                tie_word_embeddings=False,
            )
        )
    else:
        model = LlamaForCausalLM(
            LlamaConfig(
                vocab_size=vocab,
                max_position_embeddings=24,
                hidden_size=32,
                num_hidden_layers=2,
                num_attention_heads=4,
                num_key_value_heads=2,
                intermediate_size=64,
            )
        )
    with torch.no_grad():  # move every weight off its initial value (norms, biases too)
        for param in model.parameters():
            param.add_(0.1 * torch.randn_like(param))
    return model.eval()


@pytest.mark.parametrize("family", ["gpt2", "pythia", "llama"])
def test_local_hf_checkpoint_matches_in_transformer_lens(family, tmp_path, monkeypatch):
    """Random GPT-2, GPT-NeoX and Llama checkpoints give TransformerLens models with the same
    vocabulary-centred logits (after fold_ln, centring). The folder is named after the family
    on purpose: TransformerLens picks architectures by substrings of model names."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    model = random_hf_model(family)
    path = tmp_path / f"{family}-tiny"
    model.save_pretrained(str(path))
    hooked = load_local_checkpoint(str(path))
    assert hooked.cfg.model_name == path.name and hooked.cfg.n_layers == 2
    tokens = torch.randint(0, 101, (3, 20), generator=torch.Generator().manual_seed(1))
    assert_same_centred_logits(model, hooked, tokens)
    if family == "pythia":
        assert hooked.cfg.parallel_attn_mlp and hooked.cfg.rotary_dim == 2


@pytest.mark.slow
def test_train_model_demo_path(tmp_path):
    """The demo path end to end at toy size: tokenizer and model from the stdlib corpus."""
    corpus = {"source": "python_stdlib", "split": "measure"}
    tok = stage.train_tokenizer(corpus, 1024, tmp_path / "tok")
    assert len(tok) == 1024
    metrics = stage.train_model(
        tmp_path / "tok",
        tmp_path / "model",
        arch="pythia",
        n_layers=2,
        d_model=32,
        n_heads=4,
        n_ctx=64,
        steps=30,
        batch_size=8,
        lr=5e-3,
        seed=0,
        corpus=corpus,
        progress=False,
    )
    assert metrics["heldout_loss"] < metrics["initial_heldout_loss"]
    assert metrics["hyperparameters"]["arch"] == "pythia"
    hooked = load_local_checkpoint(str(tmp_path / "model"))
    assert hooked.cfg.n_ctx == 64 and hooked.cfg.d_vocab == 1024


@pytest.mark.slow
def test_train_model_with_induction_rows(tmp_path, monkeypatch):
    """train.repeats through the rule's stage: the rows trained on include the share made into
    induction rows from the tokenizer's ordinary ids, and training.json records the share."""
    corpus = {"source": "python_stdlib", "split": "measure"}
    stage.train_tokenizer(corpus, 300, tmp_path / "tok")
    seen = {}
    real = tr.train_causal_lm

    def spy(model, train_rows, heldout_rows, **kw):
        seen["rows"] = train_rows
        return real(model, train_rows, heldout_rows, **kw)

    monkeypatch.setattr(tr, "train_causal_lm", spy)
    kw = dict(arch="gpt2", n_layers=1, d_model=16, n_heads=2, n_ctx=33, steps=2)
    kw |= dict(batch_size=2, lr=1e-3, seed=0, corpus=corpus, progress=False, repeats=0.5)
    metrics = stage.train_model(tmp_path / "tok", tmp_path / "model", **kw)
    assert metrics["hyperparameters"]["repeats"] == 0.5
    assert "repeat_tokens" not in metrics["hyperparameters"]  # only when set
    assert "tie_embeddings" not in metrics["hyperparameters"]
    rows = seen["rows"]
    periods = [
        next((k for k in range(2, 17) if (r[1 + k :] == r[1 : 33 - k]).all()), 0) for r in rows
    ]
    assert 0.3 < np.mean(np.array(periods) > 0) < 0.7
    found = [k for k in periods if k]  # lengths drawn per row: no fixed offset to copy from
    assert max(Counter(found).values()) < 0.3 * len(found)


@pytest.mark.slow
def test_train_model_draws_induction_rows_from_the_frequent_tokens(tmp_path, monkeypatch):
    """train.repeat_tokens and train.repeat_lengths through the rule's stage: every induction
    row repeats a sequence of the given lengths drawn from the n tokens most frequent in the
    train rows as packed (counted here by hand), and training.json records both."""
    corpus = {"source": "python_stdlib", "split": "measure"}
    stage.train_tokenizer(corpus, 300, tmp_path / "tok")
    seen = {}
    real_repeat, real_train = tr.repeat_rows, tr.train_causal_lm

    def spy_repeat(rows, *args, **kw):
        seen["packed"] = rows
        return real_repeat(rows, *args, **kw)

    def spy_train(model, train_rows, heldout_rows, **kw):
        seen["rows"] = train_rows
        return real_train(model, train_rows, heldout_rows, **kw)

    monkeypatch.setattr(tr, "repeat_rows", spy_repeat)
    monkeypatch.setattr(tr, "train_causal_lm", spy_train)
    kw = dict(arch="gpt2", n_layers=1, d_model=16, n_heads=2, n_ctx=33, steps=2, batch_size=2)
    kw |= dict(lr=1e-3, seed=0, corpus=corpus, progress=False, repeats=1.0)
    kw |= dict(repeat_tokens=20, repeat_lengths=[3, 6])
    metrics = stage.train_model(tmp_path / "tok", tmp_path / "model", **kw)
    assert metrics["hyperparameters"]["repeat_tokens"] == 20
    assert metrics["hyperparameters"]["repeat_lengths"] == [3, 6]
    counts = Counter(seen["packed"].ravel().tolist())
    from transformers import AutoTokenizer

    special = set(AutoTokenizer.from_pretrained(str(tmp_path / "tok")).all_special_ids)
    ranked = sorted((i for i in counts if i not in special), key=lambda i: (-counts[i], i))
    frequent = set(ranked[:20])
    for row in seen["rows"]:
        k = next(k for k in range(1, 33) if (row[1 + k :] == row[1 : 33 - k]).all())
        assert 3 <= k <= 6 and set(row[1:].tolist()) <= frequent


def test_induction_row_keys_are_checked_before_any_job():
    """train.repeat_tokens / repeat_lengths: without train.repeats, or with sequences longer
    than a row after BOS or than the tokens drawn from, or decreasing, the run stops naming
    the key; within them it validates."""
    from helpers import load, merged

    import selfrepair.config as sr_config

    def validate(**keys):
        config = merged(load("config.yaml"), load("demo.yaml"))
        train = dict(config["models"][0]["train"], **keys)
        config["models"] = [{"name": "t", "train": train}]
        config["tasks"]["induction"].pop("models")  # the demo's names its induction model
        return sr_config.validate_run(config)

    validate(repeats=0.5, repeat_tokens=200, repeat_lengths=[4, 127])
    bad = {
        "set train.repeats too": dict(repeat_tokens=200),
        "must be increasing and at most 127": dict(repeats=0.5, repeat_lengths=[4, 128]),
        "at most 20 ": dict(repeats=0.5, repeat_tokens=20, repeat_lengths=[4, 21]),
        "[9, 8] must be increasing": dict(repeats=0.5, repeat_lengths=[9, 8]),
    }
    for message, keys in bad.items():
        with pytest.raises(sr_config.ConfigError, match=r"models\[t\]\.train\.repeat") as info:
            validate(**keys)
        assert message in str(info.value)


@pytest.mark.slow
def test_train_model_of_a_tasks_only_induction_model(tmp_path):
    """The demo's induction-pythia recipe through the rule's stage at toy size: every row an
    induction row, its own context (train.n_ctx) and tied embeddings, recorded in
    training.json and in the saved config."""
    corpus = {"source": "python_stdlib", "split": "measure"}
    stage.train_tokenizer(corpus, 300, tmp_path / "tok")
    kw = dict(arch="pythia", n_layers=1, d_model=16, n_heads=2, n_ctx=20, steps=2, batch_size=2)
    kw |= dict(lr=1e-3, seed=0, corpus=corpus, progress=False, repeats=1.0)
    kw |= dict(repeat_lengths=[4, 8], tie_embeddings=True)
    metrics = stage.train_model(tmp_path / "tok", tmp_path / "model", **kw)
    assert metrics["hyperparameters"]["tie_embeddings"] is True
    assert metrics["hyperparameters"]["n_ctx"] == 20
    saved = json.loads((tmp_path / "model" / "config.json").read_text())
    assert saved["tie_word_embeddings"] is True
    hooked = load_local_checkpoint(str(tmp_path / "model"))
    assert hooked.cfg.n_ctx == 20
