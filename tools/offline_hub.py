"""Fill a Hugging Face cache (an HF_HOME folder) with the paper's models and data set, offline.

Random weights (biases and norm weights drawn too, not Hugging Face's 0 and 1: standin_model),
real shapes: every checkpoint carries the real model's config.json (layers,
heads, widths, rotary fraction, parallel residual, vocabulary, context; a GPT-2 config.json with
n_ctx, as the hub's files have it) and a tokenizer of the real class and vocabulary size (a
byte-level BPE trained here on the Python standard library's sources and on IOI's words,
task_words_document: Wang et al.'s and CoAx's names, places and objects one token each, as in
the real ones). The data set NeelNanda/pile-10k gets a train split in the real columns (`text`,
and `meta` with `pile_set_name`), its text the standard library's sources and pydoc topics. So, with
HF_HUB_OFFLINE=1 and HF_HOME pointing here, TransformerLens' `from_pretrained("pythia-160m")`
and the workflow's corpus loader resolve the paper's names as they would online; only the
numbers differ (random weights, other text).

Layouts (the real ones, as huggingface_hub and datasets write them):
- models, and the data set by default: HF_HOME/hub/{models,datasets}--<org>--<name>/ with
  blobs/, snapshots/<commit>/<file> (links to the blobs) and refs/main, what `hf download`
  leaves;
- `--revisions step1000 ...` (Pythia models): training revisions beside main, each a snapshot
  of its own with the same config.json and other seeded random weights, named by
  refs/step1000, as `hf download --revision step1000` leaves it (TransformerLens loads them
  with `from_pretrained(name, checkpoint_value=1000)`: config and tokenizer from main, weights
  from the revision);
- `--datasets-cache`: the data set instead as an online `datasets.load_dataset` leaves it,
  HF_HOME/datasets/NeelNanda___pile-10k/default/0.0.0/<commit>/ (Arrow files and
  dataset_info.json).
- `--llama DIR`: a Llama-7B stand-in, not in the hub cache but as a local checkpoint folder
  (TransformerLens loads Llama-7B only from one; config/paper-llama.yaml's `path`): Llama-7B's
  config.json with reduced widths, float16 safetensors shards, a LlamaTokenizer (write_llama).

The commits are sha1 digests of the files written (stable across runs), not the hub's.

Usage:
    python tools/offline_hub.py HF_HOME [--models gpt2-small pythia-160m ...] [--documents N]
                                        [--datasets-cache] [--revisions step1000 ...]
                                        [--llama resources/llama-7b-standin]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from selfrepair.catalogue import PAPER_MODELS  # noqa: E402

DATASET = "NeelNanda/pile-10k"
EOT = "<|endoftext|>"
PAD = "<|padding|>"

# The hub's config.json of each model, value for value (GPT-2: gpt2, gpt2-medium; Pythia:
# EleutherAI/pythia-*, the final checkpoint), by TransformerLens name: a family's fixed values
# here, its sizes (None here) from the catalogue's shapes (hub_config).
_GPT2 = {
    "activation_function": "gelu_new",
    "architectures": ["GPT2LMHeadModel"],
    "attn_pdrop": 0.1,
    "bos_token_id": 50256,
    "embd_pdrop": 0.1,
    "eos_token_id": 50256,
    "initializer_range": 0.02,
    "layer_norm_epsilon": 1e-05,
    "model_type": "gpt2",
    "n_ctx": None,
    "n_positions": None,
    "resid_pdrop": 0.1,
    "summary_activation": None,
    "summary_first_dropout": 0.1,
    "summary_proj_to_labels": True,
    "summary_type": "cls_index",
    "summary_use_proj": True,
    "task_specific_params": {"text-generation": {"do_sample": True, "max_length": 50}},
    "vocab_size": None,
}
_PYTHIA = {
    "architectures": ["GPTNeoXForCausalLM"],
    "bos_token_id": 0,
    "eos_token_id": 0,
    "hidden_act": "gelu",
    "initializer_range": 0.02,
    "layer_norm_eps": 1e-05,
    "max_position_embeddings": None,
    "model_type": "gpt_neox",
    "rotary_emb_base": 10000,
    "rotary_pct": 0.25,
    "tie_word_embeddings": False,
    "torch_dtype": "float16",
    "transformers_version": "4.24.0",
    "use_cache": True,
    "use_parallel_residual": True,
    "vocab_size": None,
}
# config.json's key of each catalogue size, by family, in the order the hub's files have the
# keys the templates above lack.
_HF_KEYS = {
    "gpt2": {"n_ctx": "n_ctx", "n_positions": "n_positions", "d_vocab": "vocab_size",
             "d_model": "n_embd", "n_heads": "n_head", "n_layers": "n_layer"},
    "pythia": {"n_ctx": "max_position_embeddings", "d_vocab": "vocab_size",
               "d_model": "hidden_size", "d_mlp": "intermediate_size",
               "n_heads": "num_attention_heads", "n_layers": "num_hidden_layers"},
}  # fmt: skip
_HF_KEYS["llama"] = _HF_KEYS["pythia"]


def hub_config(name: str, template: dict) -> dict:
    """A paper model's config.json: the family's template with the catalogue's sizes."""
    model = PAPER_MODELS[name]
    sizes = {key: getattr(model.shapes, size) for size, key in _HF_KEYS[model.family].items()}
    return {**template, **sizes}


MODELS = {
    "gpt2-small": hub_config("gpt2-small", _GPT2),
    "gpt2-medium": {**hub_config("gpt2-medium", _GPT2), "n_special": 0},
    "pythia-160m": hub_config("pythia-160m", _PYTHIA),
    "pythia-410m": hub_config("pythia-410m", _PYTHIA),
    "pythia-1b": hub_config("pythia-1b", _PYTHIA),
}
# Tokenizer vocabulary sizes: GPT-2 50,257 (<|endoftext|> last); Pythia's GPT-NeoX tokenizer
# 50,277 (<|endoftext|> 0, <|padding|> 1; the model's 50,304 rows leave padding room).
GPT2_VOCAB, NEOX_VOCAB = 50257, 50277

# Llama-7B's config.json as a converted checkpoint has it (Meta's LLaMA 7B through transformers'
# convert_llama_weights_to_hf; the values published for huggyllama/llama-7b, not fetched here:
# every field TransformerLens' own llama-7b-hf table sets agrees, tests/test_paper_llama.py).
# TransformerLens 3.9 knows this model only as a local checkpoint (llama-7b-hf, weights passed
# in), so the paper's config loads it by `path` (config/paper-llama.yaml) and its stand-in is a
# folder, not a hub snapshot.
LLAMA_7B = hub_config(
    "llama-7b",
    {
        "architectures": ["LlamaForCausalLM"],
        "bos_token_id": 1,
        "eos_token_id": 2,
        "hidden_act": "silu",
        "hidden_size": None,
        "initializer_range": 0.02,
        "intermediate_size": None,
        "max_position_embeddings": None,
        "max_sequence_length": 2048,
        "model_type": "llama",
        "num_attention_heads": None,
        "num_hidden_layers": None,
        "pad_token_id": 0,
        "rms_norm_eps": 1e-06,
        "tie_word_embeddings": False,
        "torch_dtype": "float16",
        "transformers_version": "4.28.0.dev0",
        "use_cache": True,
        "vocab_size": None,
    },
)
# The stand-in's reduced widths (write_llama): Llama-7B's 32 layers x 32 heads, RMSNorm, gated
# SiLU MLP, context and vocabulary, with d_model 256 (d_head 8) and d_mlp 688 (Llama's
# 11008 / 4096), so a CPU runs it in seconds.
LLAMA_CI_WIDTHS = {"hidden_size": 256, "intermediate_size": 688}
# The standard deviation of its random matrices (Llama's initializer_range is 0.02): at 0.02 a
# 32-layer random Llama barely reacts to one head, so that ablating L30H8 moves no neuron of the
# last MLP by 1% of the head's direct effect and Fig 8's panel would be all zero; at 0.1 the
# panel's curves have something to show and to check.
LLAMA_CI_INIT = 0.1
# Hugging Face initialises every bias to 0 and every norm weight to 1, which would leave the
# folding of biases and norm weights (TransformerLens' fold_ln, fold_value_biases, centring) and
# the zero-ablation convention (z' = 0 is Hugging Face's z equal to the value bias) untested
# against transformers. The stand-ins' biases are drawn with this standard deviation instead,
# and their norm weights around 1 with NORM_STD (standin_model).
BIAS_STD = 0.1
NORM_STD = 0.2
# Marks a folder write_llama wrote, the only kind it replaces (never a real checkpoint).
STANDIN_MARK = "STAND-IN.md"


def repo_for(name: str) -> str:
    """The hub repository TransformerLens loads for a paper model (the catalogue's official
    name, TransformerLens' own; tests/test_catalogue.py checks them against its alias table)."""
    return PAPER_MODELS[name].official


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def write_snapshot(
    hub_cache: Path, repo_id: str, repo_type: str, files: Path, revision: str = "main"
) -> str:
    """Move the files under `files` into hub_cache as one snapshot of repo_id (blobs named by
    sha256, snapshot entries linking to them, refs/<revision> naming the commit); returns the
    commit (sha1 over the files' paths and digests). Writing main starts the repo afresh;
    another revision (step1000) is added beside what is there."""
    entries = sorted(p for p in files.rglob("*") if p.is_file())
    digests = {p.relative_to(files).as_posix(): _sha256(p) for p in entries}
    commit = hashlib.sha1(json.dumps(digests, sort_keys=True).encode()).hexdigest()
    repo = hub_cache / f"{repo_type}s--{repo_id.replace('/', '--')}"
    if repo.exists() and revision == "main":
        shutil.rmtree(repo)
    (repo / "blobs").mkdir(parents=True, exist_ok=True)
    (repo / "refs").mkdir(exist_ok=True)
    for path in entries:
        rel = path.relative_to(files).as_posix()
        blob = repo / "blobs" / digests[rel]
        if not blob.exists():
            shutil.move(str(path), blob)
        link = repo / "snapshots" / commit / rel
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(os.path.relpath(blob, link.parent))
    (repo / "refs" / revision).write_text(commit)
    return commit


def write_revision(hub_cache: Path, repo_id: str, config: dict, revision: str, seed: int) -> str:
    """A training revision of a model (e.g. step1000) beside its main snapshot: the same
    config.json, random weights of another seed. Returns the commit."""
    with tempfile.TemporaryDirectory(dir=hub_cache) as tmp:
        files = Path(tmp)
        (files / "config.json").write_text(json.dumps(config, indent=2))
        weight_files(config, files, seed)
        return write_snapshot(hub_cache, repo_id, "model", files, revision=revision)


def stdlib_documents() -> list[str]:
    """Every document of the offline corpus the demo uses (all splits, sorted by path)."""
    from selfrepair.data.sources import python_stdlib_documents

    return list(python_stdlib_documents("all"))


def task_words_document(repeats: int = 1000) -> str:
    """IOI's names, places and objects (Wang et al.'s lists and CoAx's), each after a space,
    repeated: among the tokenizers' training texts they make every word one token, as the real
    tokenizers have them. Without it the Python sources lack " Anna", " Sid", " park" ..., and
    config/ioi-coax.yaml (CoAx draws from every word of its lists) was refused offline."""
    from selfrepair.tasks.ioi import WORD_SETS

    words = sorted({w for lists in WORD_SETS.values() for ws in lists for w in ws})
    return "".join(f" {w}" for w in words) * repeats


def train_bpe(documents: list[str], vocab_size: int, specials: list[str]):
    """A GPT-2 style byte-level BPE (tokenizers' backend) of exactly vocab_size tokens with the
    special tokens first; the caller reorders for GPT-2."""
    from selfrepair.data.tokenizer import byte_level_bpe

    backend = byte_level_bpe(documents, vocab_size, specials, min_frequency=1)
    if backend.get_vocab_size() != vocab_size:
        raise RuntimeError(
            f"the corpus gave a BPE of {backend.get_vocab_size()} tokens, not {vocab_size}"
        )
    return backend


def _bpe_files(backend) -> tuple[dict[str, int], list[str]]:
    model = json.loads(backend.to_str())["model"]
    merges = [m if isinstance(m, str) else " ".join(m) for m in model["merges"]]
    return model["vocab"], merges


def gpt2_tokenizer_files(documents: list[str], out: Path) -> None:
    """GPT-2's tokenizer files (vocab.json, merges.txt, tokenizer.json, tokenizer_config.json):
    256 bytes and 50,000 merges, then <|endoftext|> as id 50256, as the real vocabulary is laid
    out."""
    from tokenizers import AddedToken, Tokenizer

    backend = train_bpe(documents, GPT2_VOCAB - 1, [])
    vocab, merges = _bpe_files(backend)
    vocab = {token: i for i, token in enumerate(sorted(vocab, key=vocab.get))}
    vocab[EOT] = GPT2_VOCAB - 1
    (out / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False))
    (out / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n")
    spec = json.loads(backend.to_str())
    spec["model"]["vocab"] = vocab
    full = Tokenizer.from_str(json.dumps(spec))
    full.add_special_tokens([AddedToken(EOT, special=True, normalized=True)])
    full.save(str(out / "tokenizer.json"))
    (out / "tokenizer_config.json").write_text(json.dumps({"model_max_length": 1024}))


def neox_tokenizer_files(documents: list[str], out: Path) -> None:
    """Pythia's tokenizer files (tokenizer.json, tokenizer_config.json,
    special_tokens_map.json): GPTNeoXTokenizer, <|endoftext|> 0 and <|padding|> 1."""
    backend = train_bpe(documents, NEOX_VOCAB, [EOT, PAD])
    backend.save(str(out / "tokenizer.json"))
    specials = {"bos_token": EOT, "eos_token": EOT, "unk_token": EOT}
    (out / "special_tokens_map.json").write_text(json.dumps(specials))
    (out / "tokenizer_config.json").write_text(
        json.dumps({"add_prefix_space": False, "tokenizer_class": "GPTNeoXTokenizer", **specials})
    )


def llama_tokenizer_files(documents: list[str], out: Path) -> None:
    """Llama's tokenizer files (tokenizer.json, tokenizer_config.json) as transformers'
    LlamaTokenizer saves them: a BPE with byte fallback over "▁"-marked words, <unk> 0, <s> 1,
    </s> 2, the 256 byte tokens <0x00>..<0xFF> next, 32,000 tokens in all."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import LlamaTokenizer

    specials = ["<unk>", "<s>", "</s>"] + [f"<0x{b:02X}>" for b in range(256)]
    backend = Tokenizer(models.BPE(unk_token="<unk>", byte_fallback=True))
    backend.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first")
    trainer = trainers.BpeTrainer(
        vocab_size=LLAMA_7B["vocab_size"],
        min_frequency=1,
        special_tokens=specials,
        limit_alphabet=1000,
        show_progress=False,
    )
    backend.train_from_iterator(documents, trainer=trainer)
    vocab, merges = _bpe_files(backend)
    if len(vocab) != LLAMA_7B["vocab_size"]:
        raise RuntimeError(f"the corpus gave a BPE of {len(vocab)} tokens, not 32000")
    tokenizer = LlamaTokenizer(vocab=vocab, merges=[tuple(m.split(" ")) for m in merges])
    tokenizer.save_pretrained(str(out))


def write_llama(out: Path, documents: list[str], seed: int = 0) -> Path:
    """A Llama-7B stand-in as a local Hugging Face checkpoint folder, the layout of a converted
    llama-7b-hf: config.json (LLAMA_7B with LLAMA_CI_WIDTHS), random weights in float16 as
    safetensors shards with their index (save_pretrained's), generation_config.json and a
    LlamaTokenizer trained here. Weights: standin_model's, with standard deviation
    LLAMA_CI_INIT (the RMSNorm weights drawn around 1: initialised to exactly 1 they would leave
    the folding of the norm weights into the next matrices untested). Refuses to replace a
    folder it did not write. Returns out.

    Args:
        out: the folder to write (replaced if an earlier stand-in).
        documents: the tokenizer's training texts.
        seed: the weights' seed.
    """
    if out.exists() and not (out / STANDIN_MARK).is_file():
        raise SystemExit(f"{out} exists and is not a stand-in written here; choose another folder")
    config = {**LLAMA_7B, **LLAMA_CI_WIDTHS}
    with tempfile.TemporaryDirectory(dir=out.parent if out.parent.exists() else None) as tmp:
        files = Path(tmp) / "llama"
        model = standin_model({**config, "initializer_range": LLAMA_CI_INIT}, seed)
        model.half().save_pretrained(str(files), max_shard_size="40MB")
        (files / "config.json").write_text(json.dumps(config, indent=2))  # the 7B file's keys
        llama_tokenizer_files(documents, files)
        (files / STANDIN_MARK).write_text(
            "Random-weight stand-in for Llama-7B (Llama-7B's config.json with reduced widths; "
            f"weights drawn with standard deviation {LLAMA_CI_INIT}, RMSNorm weights around 1), "
            "written by tools/offline_hub.py --llama. Not a trained model.\n"
        )
        if out.exists():
            shutil.rmtree(out)
        out.parent.mkdir(parents=True, exist_ok=True)
        shutil.move(str(files), out)
    return out


def is_norm(module) -> bool:
    """Whether a module is a normalisation layer (LayerNorm, or a family's RMSNorm class)."""
    import torch

    return isinstance(module, torch.nn.LayerNorm) or type(module).__name__.endswith("RMSNorm")


def standin_model(config: dict, seed: int):
    """A random float32 Hugging Face causal LM of this config: Hugging Face's own initialisation
    (seeded), then, from a generator of the same seed, every bias drawn with standard deviation
    BIAS_STD and every norm weight around 1 with NORM_STD (its bias, where it has one, with
    BIAS_STD), so that no bias is 0 and no norm weight 1 (BIAS_STD says why)."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(AutoConfig.for_model(**config), dtype=torch.float32)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in model.modules():
            for name, param in module.named_parameters(recurse=False):
                if is_norm(module) and name == "weight":
                    param.copy_(1 + NORM_STD * torch.randn(param.shape, generator=gen))
                elif name == "bias":
                    param.copy_(BIAS_STD * torch.randn(param.shape, generator=gen))
    return model


def weight_files(config: dict, out: Path, seed: int) -> None:
    """model.safetensors of a random model of this config (standin_model: Hugging Face's own
    initialisation, seeded, with drawn biases and norm weights), keyed and typed as the hub's
    file: GPT-2 float32 without the `transformer.` prefix and without the tied lm_head, Pythia
    float16."""
    from safetensors.torch import save_file

    model = standin_model(config, seed)
    if config["model_type"] == "gpt2":
        state = model.transformer.state_dict()
    else:
        state = {k: v.half() for k, v in model.state_dict().items()}
    state = {k: v.contiguous() for k, v in state.items()}
    save_file(state, str(out / "model.safetensors"), metadata={"format": "pt"})
    generation = {"bos_token_id": config["bos_token_id"], "eos_token_id": config["eos_token_id"]}
    (out / "generation_config.json").write_text(json.dumps(generation))


def fill_model(
    hub_cache: Path,
    name: str,
    documents: list[str],
    tokenizers_dir: Path,
    seed: int,
    revisions: tuple[str, ...] = (),
) -> tuple[str, str]:
    """One model's snapshot: real config.json, random weights, trained tokenizer; and each
    training revision (write_revision, seeds after seed). Returns (repo id, main's commit)."""
    repo_id = repo_for(name)
    config = MODELS[name]
    family = config["model_type"]
    tokenizer = tokenizers_dir / family
    if not tokenizer.exists():
        tokenizer.mkdir(parents=True)
        if family == "gpt2":
            gpt2_tokenizer_files(documents, tokenizer)
        else:
            neox_tokenizer_files(documents, tokenizer)
    with tempfile.TemporaryDirectory(dir=hub_cache) as tmp:
        files = Path(tmp)
        for item in tokenizer.iterdir():
            shutil.copy(item, files / item.name)
        (files / "config.json").write_text(json.dumps(config, indent=2))
        weight_files(config, files, seed)
        commit = write_snapshot(hub_cache, repo_id, "model", files)
    for index, revision in enumerate(revisions, start=1):
        write_revision(hub_cache, repo_id, config, revision, seed + 1000 * index)
    return repo_id, commit


def pile_table(documents: list[str]):
    """The pile-10k train split's columns: text, and meta {pile_set_name} (a struct, as the
    real data set's parquet file has it)."""
    import pyarrow as pa

    meta = [{"pile_set_name": "Python standard library (offline stand-in)"}] * len(documents)
    return pa.table({"text": documents, "meta": meta})


def fill_dataset_hub(hub_cache: Path, documents: list[str]) -> str:
    """NeelNanda/pile-10k as `hf download --repo-type dataset` leaves it: data/*.parquet and a
    README.md with the data set's configs. Returns the commit."""
    import pyarrow.parquet as pq

    with tempfile.TemporaryDirectory(dir=hub_cache) as tmp:
        files = Path(tmp)
        (files / "data").mkdir()
        pq.write_table(pile_table(documents), files / "data" / "train-00000-of-00001.parquet")
        (files / "README.md").write_text(
            "---\nconfigs:\n- config_name: default\n  data_files:\n  - split: train\n"
            "    path: data/train-*\n---\nOffline stand-in for NeelNanda/pile-10k written by "
            "tools/offline_hub.py: the Python standard library's sources, real columns.\n"
        )
        return write_snapshot(hub_cache, DATASET, "dataset", files)


def fill_datasets_cache(datasets_cache: Path, documents: list[str]) -> str:
    """NeelNanda/pile-10k as an online `datasets.load_dataset("NeelNanda/pile-10k")` leaves it
    in HF_DATASETS_CACHE: the parquet builder run with the hub's repo id, data set name and
    commit, so datasets' offline fallback finds NeelNanda___pile-10k/default/0.0.0/<commit>.
    Returns the commit."""
    import pyarrow.parquet as pq
    from datasets.packaged_modules.parquet.parquet import Parquet

    org, name = DATASET.split("/")
    target = datasets_cache / f"{org}___{name}"
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "train-00000-of-00001.parquet"
        pq.write_table(pile_table(documents), data)
        commit = hashlib.sha1(_sha256(data).encode()).hexdigest()
        # With the repo id the builder insists on hf:// data files; without it, it writes
        # <name>/default-<data files hash>/0.0.0/<commit>, renamed here to the folders an
        # online load writes, <org>___<name>/default/0.0.0/<commit>.
        builder = Parquet(
            cache_dir=str(Path(tmp) / "cache"),
            dataset_name=name,
            config_name="default",
            hash=commit,
            data_files={"train": [str(data)]},
        )
        builder.download_and_prepare()
        if target.exists():
            shutil.rmtree(target)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.move(str(Path(tmp) / "cache" / name), target)
        (config_dir,) = target.glob("default-*")
        config_dir.rename(target / "default")
    return commit


def fill(
    hf_home: Path,
    models: list[str],
    n_documents: int | None = None,
    datasets_cache: bool = False,
    seed: int = 0,
    revisions: tuple[str, ...] = (),
    llama: Path | None = None,
) -> dict:
    """Fill hf_home (see the module docstring); returns {repo id: commit}. revisions: training
    revisions written beside main for each Pythia model; llama: a folder to write a Llama-7B
    stand-in to (write_llama; a local checkpoint, outside hf_home's hub cache)."""
    hub_cache = hf_home / "hub"
    hub_cache.mkdir(parents=True, exist_ok=True)
    documents = stdlib_documents()
    vocabulary = [*documents, task_words_document()]  # the tokenizers' texts; the pile's: documents
    commits = {}
    with tempfile.TemporaryDirectory() as tmp:
        for index, name in enumerate(models):
            t0 = time.perf_counter()
            revs = tuple(revisions) if name.startswith("pythia") else ()
            repo_id, commit = fill_model(
                hub_cache, name, vocabulary, Path(tmp), seed + index, revisions=revs
            )
            commits[repo_id] = commit
            print(f"{name}: {repo_id}@{commit} ({time.perf_counter() - t0:.0f} s)", flush=True)
    if llama is not None:
        t0 = time.perf_counter()
        write_llama(llama, vocabulary, seed + len(models))
        print(f"llama-7b stand-in: {llama} ({time.perf_counter() - t0:.0f} s)", flush=True)
    pile = documents if n_documents is None else documents[:n_documents]
    if datasets_cache:
        commits[DATASET] = fill_datasets_cache(hf_home / "datasets", pile)
    else:
        commits[DATASET] = fill_dataset_hub(hub_cache, pile)
    print(f"{DATASET}: {len(pile)} documents @{commits[DATASET]}", flush=True)
    return commits


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("hf_home", type=Path, help="the folder to fill (use it as HF_HOME)")
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    parser.add_argument("--documents", type=int, default=None, help="pile-10k rows (all)")
    parser.add_argument(
        "--datasets-cache",
        action="store_true",
        help="write the data set as an online datasets.load_dataset leaves it, not as "
        "`hf download` does",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--revisions",
        nargs="+",
        default=[],
        help="training revisions (step<N>) written beside main for each Pythia model",
    )
    parser.add_argument(
        "--llama",
        type=Path,
        default=None,
        help="also write a Llama-7B stand-in (Llama-7B's config.json, reduced widths, random "
        "weights) as a local checkpoint folder here, for config/paper-llama.yaml's `path`",
    )
    args = parser.parse_args(argv)
    fill(
        args.hf_home,
        args.models,
        args.documents,
        args.datasets_cache,
        args.seed,
        revisions=tuple(args.revisions),
        llama=args.llama,
    )


if __name__ == "__main__":
    main()
