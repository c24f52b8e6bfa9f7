"""The paper's hub path offline: the cache tool's layouts, the corpus loader on both fillings of
a data set cache, hub models whose GPT-2 config.json lacks n_ctx, and the check that stops a run
whose hub models or data set can be neither downloaded nor read from the cache.

Hub state is read by huggingface_hub and datasets when they are imported, so each scenario runs
in a fresh interpreter with its own HF_HOME."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import selfrepair.config as sr_config
from selfrepair.data.sources import python_stdlib_documents
from selfrepair.data.tokenizer import train_tokenizer

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tools"))
import offline_hub  # noqa: E402

DOCS = [d for _, d in zip(range(12), python_stdlib_documents("measure"), strict=False)]


def run_python(code: str, hf_home: Path, offline: bool = True) -> dict:
    """Run code in a fresh interpreter with HF_HOME (and HF_HUB_OFFLINE); its last stdout line
    is JSON, returned."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "HUGGINGFACE"))}
    env.update(HF_HOME=str(hf_home), PYTHONPATH=str(ROOT))
    if offline:
        env["HF_HUB_OFFLINE"] = "1"
    proc = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def tiny_gpt2_snapshot(hf_home: Path, tmp: Path, n_ctx: bool) -> str:
    """A 2-layer GPT-2 under the hub name `gpt2` (gpt2-small's), written as the cache tool
    writes the real one, with or without n_ctx in config.json; returns the commit."""
    files = tmp / "files"
    files.mkdir()
    tokenizer = train_tokenizer(DOCS, 300, tmp / "tok")
    tokenizer.save_pretrained(str(files))
    config = dict(offline_hub._GPT2, n_embd=32, n_head=4, n_layer=2, n_positions=64)
    config.update(vocab_size=len(tokenizer), bos_token_id=0, eos_token_id=0)
    if n_ctx:
        config["n_ctx"] = 64
    else:
        del config["n_ctx"]
    (files / "config.json").write_text(json.dumps(config))
    offline_hub.weight_files(config, files, seed=3)
    return offline_hub.write_snapshot(hf_home / "hub", "gpt2", "model", files)


# Tiny configs of the families the cache tool writes, the hub's keys with small widths.
TINY = {
    "gpt2": dict(
        offline_hub.MODELS["gpt2-small"], n_embd=32, n_head=4, n_layer=2, n_positions=64,
        n_ctx=64,
    ),
    "gpt_neox": dict(
        offline_hub.MODELS["pythia-160m"], hidden_size=32, intermediate_size=64,
        num_attention_heads=4, num_hidden_layers=2, max_position_embeddings=64,
    ),
    "llama": dict(
        offline_hub.LLAMA_7B, hidden_size=32, intermediate_size=64, num_attention_heads=4,
        num_hidden_layers=2, max_position_embeddings=64,
    ),
}  # fmt: skip
# Per family, the biases and norm weights a stand-in must not leave at 0 and 1 (a layer's, the
# final norm's): every one the family has.
DRAWN = {
    "gpt2": [
        *(f"h.1.{m}.bias" for m in ("ln_1", "ln_2", "attn.c_attn", "attn.c_proj", "mlp.c_fc")),
        *("h.1.mlp.c_proj.bias", "h.1.ln_1.weight", "h.1.ln_2.weight", "ln_f.weight", "ln_f.bias"),
    ],
    "gpt_neox": [
        *(f"gpt_neox.layers.1.{m}" for m in (
            "input_layernorm.weight", "input_layernorm.bias", "post_attention_layernorm.weight",
            "post_attention_layernorm.bias", "attention.query_key_value.bias",
            "attention.dense.bias", "mlp.dense_h_to_4h.bias", "mlp.dense_4h_to_h.bias",
        )),
        "gpt_neox.final_layer_norm.weight", "gpt_neox.final_layer_norm.bias",
    ],
    "llama": [
        "model.layers.1.input_layernorm.weight", "model.layers.1.post_attention_layernorm.weight",
        "model.norm.weight",
    ],
}  # fmt: skip


@pytest.mark.parametrize("family", list(TINY))
def test_standins_have_drawn_biases_and_norm_weights(tmp_path, family):
    """Every bias of a stand-in is non-zero and every norm weight off 1 (Hugging Face's own
    initialisation leaves them 0 and 1, and the checks against transformers would then never
    see the folding of biases and norm weights), in the file the hub snapshot gets (GPT-2,
    Pythia) or the model write_llama saves; the same seed writes the same bytes."""
    config = TINY[family]
    model = offline_hub.standin_model(config, seed=5)
    if family == "llama":
        state = {k: v.float() for k, v in model.state_dict().items()}
    else:
        from safetensors.torch import load_file

        for folder in ("a", "b"):
            (tmp_path / folder).mkdir()
            offline_hub.weight_files(config, tmp_path / folder, seed=5)
        first, second = ((tmp_path / f / "model.safetensors").read_bytes() for f in "ab")
        assert first == second
        state = {k: v.float() for k, v in load_file(tmp_path / "a" / "model.safetensors").items()}
    params = dict(model.named_parameters())
    prefix = "transformer." if family == "gpt2" else ""
    drawn = [k for k in state if prefix + k in params and k.endswith(("bias", "norm.weight"))]
    drawn += [k for k in state if k.endswith(("ln_1.weight", "ln_2.weight", "ln_f.weight"))]
    assert set(DRAWN[family]) <= set(drawn)
    for name in drawn:
        value = state[name] - (0 if name.endswith("bias") else 1)
        # float16 (Pythia) rounds a few weights within 5e-4 of 1 to 1: most, not all, are off
        assert (value != 0).float().mean() > 0.9 and value.std() > 0.05, name


@pytest.mark.slow  # two BPEs of the whole standard library: 25 s (shared machine)
def test_standin_tokenizers_hold_every_ioi_word(tmp_path, monkeypatch):
    """The tokenizers fill writes (GPT-2's, Pythia's) keep every IOI word one token after a
    space, as the real ones do: CoAx's lists whole (config/ioi-coax.yaml draws from every word
    and refused the stand-in, which lacked " Anna", " park" ...) and all of Wang et al.'s names.
    Weights are not written (not what is checked here)."""
    from transformers import AutoTokenizer

    from selfrepair.tasks.ioi import NAMES, ioi_words

    monkeypatch.setattr(offline_hub, "weight_files", lambda config, out, seed: None)
    offline_hub.fill(tmp_path / "hf", ["gpt2-small", "pythia-160m"], n_documents=1)
    for repo in ("gpt2", "EleutherAI--pythia-160m"):
        (snapshot,) = (tmp_path / "hf" / "hub" / f"models--{repo}" / "snapshots").iterdir()
        tokenizer = AutoTokenizer.from_pretrained(str(snapshot))
        names, places, objects = ioi_words(tokenizer, "coax")  # TaskError naming what is lost
        assert (len(names), len(places), len(objects)) == (16, 8, 8), repo
        assert len(ioi_words(tokenizer, "wang")[0]) == len(NAMES), repo


# Centred logits of rows by TransformerLens (through selfrepair's loader) and by transformers'
# own GPT2LMHeadModel on the same snapshot.
COMPARE_GPT2 = """
import json, torch
from huggingface_hub import snapshot_download
from transformers import GPT2LMHeadModel
from selfrepair.models.loading import load_model
tokens = torch.tensor([[0, 5, 17, 99, 3, 250, 7, 8], [0, 44, 2, 9, 120, 11, 6, 1]])
model = load_model("gpt2-small")
ours = model(tokens)
ref = GPT2LMHeadModel.from_pretrained(snapshot_download("gpt2"), dtype=torch.float32).eval()
with torch.no_grad():
    theirs = ref(tokens).logits
centred = lambda x: x - x.mean(-1, keepdim=True)
err = (centred(ours) - centred(theirs)).abs().max().item()
print(json.dumps({"err": err, "n_ctx": model.cfg.n_ctx, "name": model.cfg.model_name}))
"""


@pytest.mark.slow  # fresh interpreters importing TransformerLens: about 15 s each on 2 free cores
@pytest.mark.parametrize("n_ctx", [True, False], ids=["hub-config", "config-without-n_ctx"])
def test_hub_gpt2_loads_offline_with_or_without_n_ctx(tmp_path, n_ctx):
    """gpt2-small by its official name from the hub cache, offline: the hub's config.json (with
    n_ctx) through from_pretrained, a transformers-5 one (without) through the config view; both
    give transformers' own centred logits."""
    hf_home = tmp_path / "hf"
    tiny_gpt2_snapshot(hf_home, tmp_path, n_ctx)
    result = run_python(COMPARE_GPT2, hf_home)
    assert result["err"] < 1e-4, result
    assert result["n_ctx"] == 64 and result["name"] == "gpt2"


READ_PILE = """
import json
from selfrepair.data.hub import hub_documents, resolve_hub_dataset
docs = list(hub_documents("NeelNanda/pile-10k", "train"))
print(json.dumps({"docs": docs, "where": resolve_hub_dataset("NeelNanda/pile-10k")}))
"""

PLAIN_LOAD = """
import json, datasets
try:
    datasets.load_dataset("NeelNanda/pile-10k", split="train")
    print(json.dumps({"ok": True}))
except Exception as err:
    print(json.dumps({"ok": False, "error": type(err).__name__}))
"""


@pytest.mark.slow
def test_pile_from_a_hub_download_snapshot(tmp_path):
    """The layout `hf download --repo-type dataset` leaves (which datasets.load_dataset offline
    does not read): read through huggingface_hub's snapshot, its commit the revision."""
    hf_home = tmp_path / "hf"
    (hf_home / "hub").mkdir(parents=True)
    commit = offline_hub.fill_dataset_hub(hf_home / "hub", DOCS)
    assert run_python(PLAIN_LOAD, hf_home)["ok"] is False  # the bug worked around
    result = run_python(READ_PILE, hf_home)
    assert result["docs"] == DOCS
    assert result["where"]["kind"] == "hub_snapshot"
    assert result["where"]["revision"] == commit


@pytest.mark.slow
def test_pile_from_an_online_load_datasets_cache(tmp_path):
    """The layout an online datasets.load_dataset leaves in HF_DATASETS_CACHE: datasets reads it
    offline itself, and the revision is its commit directory."""
    hf_home = tmp_path / "hf"
    commit = offline_hub.fill_datasets_cache(hf_home / "datasets", DOCS)
    assert run_python(PLAIN_LOAD, hf_home)["ok"] is True
    result = run_python(READ_PILE, hf_home)
    assert result["docs"] == DOCS
    assert result["where"] == {"kind": "hub", "revision": commit}


def test_pile_columns_are_the_real_ones(tmp_path):
    import pyarrow.parquet as pq

    commit = offline_hub.fill_dataset_hub(tmp_path, DOCS[:3])
    data = tmp_path / "datasets--NeelNanda--pile-10k" / "snapshots" / commit / "data"
    table = pq.read_table(next(data.glob("train-*.parquet")))
    assert table.column_names == ["text", "meta"]
    assert set(table.column("meta").to_pylist()[0]) == {"pile_set_name"}


@pytest.fixture
def hub_env(tmp_path, monkeypatch):
    """huggingface_hub's constants pointed at an empty HF_HOME in tmp_path."""
    from huggingface_hub import constants

    hf_home = tmp_path / "hf"
    monkeypatch.setattr(constants, "HF_HOME", str(hf_home))
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(hf_home / "hub"))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.delenv("HF_DATASETS_CACHE", raising=False)
    return hf_home


def paper_config(**corpus) -> tuple[dict, dict]:
    import yaml

    config = yaml.safe_load((ROOT / "config" / "config.yaml").read_text())
    config["data"]["corpus"].update(corpus)
    return config, sr_config.model_entries(config)


def test_check_hub_access_stops_in_one_line_naming_model_home_and_offline(hub_env, monkeypatch):
    from huggingface_hub import constants

    config, entries = paper_config()
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    probes = []
    with pytest.raises(sr_config.ConfigError) as err:
        sr_config.check_hub_access(config, entries, reachable=probes.append)
    message = str(err.value)
    assert "\n" not in message and not probes  # offline: no connection attempted
    for needed in ("model pythia-1b (EleutherAI/pythia-1b)", "model gpt2-small (gpt2)"):
        assert needed in message
    assert "data set NeelNanda/pile-10k" in message
    assert f"HF_HOME={hub_env}" in message and "HF_HUB_OFFLINE=1" in message


def test_check_hub_access_online_probes_once_and_only_when_needed(hub_env):
    config, entries = paper_config()
    with pytest.raises(sr_config.ConfigError, match="HF_HUB_OFFLINE is unset and .* cannot be"):
        sr_config.check_hub_access(config, entries, reachable=lambda endpoint: False)
    probes = []
    sr_config.check_hub_access(config, entries, reachable=lambda e: probes.append(e) or True)
    assert len(probes) == 1  # the network is there: the first job downloads


def test_check_hub_access_passes_on_a_filled_cache_without_probing(hub_env, tmp_path):
    from huggingface_hub import constants

    config, entries = paper_config()
    config["models"] = ["gpt2-small"]
    entries = sr_config.model_entries(config)
    hub = Path(constants.HF_HUB_CACHE)
    hub.mkdir(parents=True)
    files = tmp_path / "files"
    files.mkdir()
    for name in ("config.json", "model.safetensors", "tokenizer.json"):
        (files / name).write_text("{}")
    offline_hub.write_snapshot(hub, "gpt2", "model", files)
    assert sr_config.hub_needs(config, entries) == ["data set NeelNanda/pile-10k"]
    offline_hub.fill_dataset_hub(hub, DOCS[:2])
    sr_config.check_hub_access(config, entries, reachable=lambda e: pytest.fail("probed"))


def test_check_hub_access_local_corpus_and_missing_local_path(hub_env, tmp_path):
    config, entries = paper_config(hub={"path": str(tmp_path / "pile.jsonl"), "split": "train"})
    config["models"] = [{"name": "m", "path": str(tmp_path)}]
    entries = sr_config.model_entries(config)
    with pytest.raises(sr_config.ConfigError, match="data.corpus.hub.path: .* does not exist"):
        sr_config.check_hub_access(config, entries, reachable=lambda e: True)
    (tmp_path / "pile.jsonl").write_text('{"text": "a"}\n')
    sr_config.check_hub_access(config, entries, reachable=lambda e: pytest.fail("probed"))
