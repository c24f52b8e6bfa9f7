"""Every key of the config schema goes through the workflow's own path: one `snakemake -n` with a
config that sets every key of the schema must plan, and that config must cover the schema, so a
new key cannot be tested only through the function under it (a unit test that called
`attribution_heads` directly once hid a crash of every use of figures.attribution.heads)."""

from __future__ import annotations

import functools
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from helpers import ROOT, SCHEMA

from selfrepair.models.builders import build_model


def _resolve(node: dict, root: dict) -> dict:
    while "$ref" in node and len(node) >= 1:
        target = root
        for part in node["$ref"].lstrip("#/").split("/"):
            target = target[part]
        node = {**target, **{k: v for k, v in node.items() if k != "$ref"}}
    return node


def schema_keys(node: dict, root: dict, prefix: str = "") -> set[str]:
    """Every key path a config can set: `a.b`, `models[].heads`, `tokenizers.*.vocab_size`."""
    node = _resolve(node, root)
    keys: set[str] = set()
    for part in node.get("allOf", []) + node.get("oneOf", []) + node.get("anyOf", []):
        keys |= schema_keys(part, root, prefix)
    for name, sub in (node.get("properties") or {}).items():
        path = f"{prefix}.{name}" if prefix else name
        keys.add(path)
        keys |= schema_keys(sub, root, path)
    extra = node.get("additionalProperties")
    if isinstance(extra, dict):
        keys |= schema_keys(extra, root, f"{prefix}.*")
    items = node.get("items")
    if isinstance(items, dict):
        keys |= schema_keys(items, root, f"{prefix}[]")
    return keys


def config_keys(value, prefix: str = "") -> set[str]:
    """The key paths a config sets, in schema_keys' spelling (list items as [])."""
    keys: set[str] = set()
    if isinstance(value, dict):
        for name, sub in value.items():
            path = f"{prefix}.{name}" if prefix else name
            keys.add(path)
            keys |= config_keys(sub, path)
    elif isinstance(value, list):
        for item in value:
            keys |= config_keys(item, f"{prefix}[]")
    return keys


def _covered(schema_key: str, keys: set[str]) -> bool:
    pattern = re.escape(schema_key).replace(r"\*", r"[^.\[\]]+")
    return any(re.fullmatch(pattern, key) for key in keys)


@functools.cache
def path_tokenizer():
    """A byte-level BPE of at most 300 tokens: a `path` folder needs its tokenizer."""
    from transformers import GPT2TokenizerFast

    from selfrepair.data.tokenizer import SPECIAL, byte_level_bpe

    backend = byte_level_bpe(["x = 1, y = 2, z = 3"] * 20, 300, [SPECIAL], min_frequency=2)
    return GPT2TokenizerFast(
        tokenizer_object=backend, bos_token=SPECIAL, eos_token=SPECIAL, unk_token=SPECIAL
    )


def checkpoint(path: Path, seed: int) -> str:
    build_model("gpt2", 300, 2, 16, 2, 16, seed=seed).save_pretrained(str(path))
    path_tokenizer().save_pretrained(str(path))
    return str(path)


def prompts_file(tmp: Path) -> str:
    """A JSONL prompts file of two lines with every field."""
    path = tmp / "prompts.jsonl"
    line = {"prompt": "x = 1", "answer": " y", "counterfactual": " z", "corrupted": "x = 2"}
    path.write_text(json.dumps(line) + "\n" + json.dumps(line | {"prompt": "y = 2"}) + "\n")
    return str(path)


def every_key_config(tmp: Path) -> dict:
    """A valid config that sets every key of the schema (most to a value other than its
    default), on models the dry run can plan offline: a trained one, one by path with a local
    checkpoint, a Pythia hub model with a revision, a hub model by bare name."""
    text = tmp / "corpus.txt"
    text.write_text("def f(x):\n    return x\n" * 50)
    hub = {"path": "NeelNanda/pile-10k", "name": None, "split": "train", "text_column": "text"}
    corpus = {"source": "text_files", "split": "all", "hub": hub, "files": [str(text)]}
    resources = {"threads": 1, "mem_mb": 2000, "runtime": 5}
    target = {"model": "m-train", "heads": [[1, 0]]}
    substitute = {"model": "m-train", "pick": "largest_top_de", "n": 1, "rank": 1}
    return {
        "device": "cpu",
        "dtype": "float32",
        "seed": 3,
        "data": {
            "corpus": corpus,
            "n_tokens": 1024,
            "seq_len": 16,
            "shard_rows": 32,
        },
        "engine": {
            "batch_size": 8,
            "heads_per_pass": 2,
            "mean_include_bos": False,
            "top_fraction": 0.05,
            "frozen_ln": ["mean"],
            "de_epsilon": 0.02,
            "attribution": True,
            "atp": True,
            "atp_top_graddrop": False,
            "store_tokens": "top",
        },
        "ablations": ["mean", "resample", "zero"],
        "ablation_sets": {"pair": [[0, 0], [1, 0]]},
        "resources": resources,
        "checkpoint_shards": 1,
        "estimate": {"flops_per_second": 1e11, "seconds_per_job": 2},
        "tokenizers": {"t1": {"vocab_size": 300, "corpus": corpus | {"split": "train"}}},
        "models": [
            {
                "name": "m-train",
                "train": {
                    "arch": "gpt2",
                    "tokenizer": "t1",
                    "n_layers": 2,
                    "d_model": 16,
                    "n_heads": 2,
                    "steps": 10,
                    "batch_size": 2,
                    "lr": 0.01,
                    "seed": 1,
                    "keep_steps": [0, 5],
                    "repeats": 0.25,
                    "repeat_tokens": 50,
                    "repeat_lengths": [2, 8],
                },
                "heads": [[0, 0], [1, 0], [1, 1]],
                "batch_size": 4,
                "resources": resources,
            },
            {
                "name": "m-path",
                "path": checkpoint(tmp / "ckpt", 0),
                "checkpoints": [{"step": 1, "path": checkpoint(tmp / "ckpt-1", 1)}],
                "step": 2,
            },
            {"name": "pythia-160m", "revisions": ["step1000"], "heads": [[11, 2], [10, 11]]},
            "gpt2-small",
            {  # measured on its tasks only: a shorter context, tied embeddings (last, so the
                # tests that edit models[0] and models[1] keep theirs)
                "name": "m-task",
                "tasks_only": True,
                "train": {
                    "arch": "pythia",
                    "tokenizer": "t1",
                    "n_layers": 1,
                    "d_model": 16,
                    "n_heads": 2,
                    "n_ctx": 12,
                    "steps": 10,
                    "batch_size": 2,
                    "lr": 0.01,
                    "repeats": 1.0,
                    "tie_embeddings": True,
                },
            },
        ],
        "figures": {
            "attribution": {"most_repaired": 2, "repairers": 3, "heads": {"m-train": [[0, 0]]}},
            "atp": {"top_k": 1, "table_heads": 3, "repairers": 2},
            "ablation": "mean",
            "bootstrap": {"resamples": 20, "level": 0.9},
            "fig02": {"model": "m-path", "substitute": {"model": "m-train"}},
            "fig03": {"model": "pythia-410m", "heads": [[22, 11]], "substitute": substitute},
            "fig05": {"model": "pythia-160m", "heads": [[11, 2]], "substitute": target},
            "fig21_24": {"models": ["m-path"]},
        },
        "explorer": {"tokens_per_head": 5, "context": 8, "repairers": 2},
        "tasks": {
            "t-ioi": {
                "type": "ioi",
                "models": ["gpt2-small"],
                "n_prompts": 8,
                "metric": "logit_diff",
                "ablations": ["corrupted", "mean"],
                "ablation_sets": {"movers": [[9, 9], [10, 0]], "largest": {"direct_effect_top": 2}},
                "expected_backups": [[10, 10], [11, 2]],
                "roles": {"negative name mover": [[10, 7]]},
                "backup_heads": 2,
                "methods": {"eap_ig_steps": 2, "coax_anchors": True},
            },
            "t-induction": {
                "type": "induction",
                "models": ["m-train", "m-task"],
                "n_prompts": 4,
                "length": 4,
                "ablations": ["corrupted", "resample", "zero-frozen-ln"],
                "ablation_sets": {"strongest": {"induction_score_top": 2}},
                "expected_backups": {"induction_score_above": 0.4},
            },
            "t-coax": {  # CoAx's protocol: its prompts, no BOS, a task per prompt seed
                "type": "ioi",
                "models": ["gpt2-small"],
                "n_prompts": 4,
                "templates": "coax",
                "names": "coax",
                "prepend_bos": False,
                "prompt_seeds": [3, 5],
                "ablations": ["zero"],
                "ablation_sets": {"movers": [[9, 9]]},
                "expected_backups": [[10, 10]],
            },
            "t-file": {
                "type": "prompts",
                "file": prompts_file(tmp),
                "models": ["m-path"],
                "max_prompts": 100,
            },
        },
        "mechanisms": {
            "neurons": {
                "ablation": "zero",
                "mlp_layer": -1,
                "top_n": 3,
                "thresholds": [0.5, 0.1],
                "ranks": 5,
                "fig07": {"model": "pythia-160m", "heads": [[10, 11]], "substitute": target},
                "fig08": [{"model": "m-train", "heads": [[1, 0]]}],
                "fig15": {"model": "pythia-160m", "heads": [[10, 11]], "substitute": target},
            },
            "norms": {
                "fig04": {"model": "m-train", "heads": [[1, 1]]},
                "fig16_18": {"model": "gpt2-small", "heads": [[11, 3]], "substitute": target},
            },
            "reinforcement": {
                "scales": [1, 2],
                "rows": 2,
                "seq_len": 4,
                "second_half": True,
                "fig09": {
                    "model": "gpt2-medium",
                    "heads": [[21, 1]],
                    "substitute": {"model": "m-train", "pick": "most_self_repressing"},
                },
            },
        },
    }


def test_the_every_key_config_covers_the_schema(tmp_path):
    schema = yaml.safe_load(Path(SCHEMA).read_text())
    keys = config_keys(every_key_config(tmp_path))
    missing = sorted(k for k in schema_keys(schema, schema) if not _covered(k, keys))
    assert missing == [], f"add these keys to every_key_config: {missing}"


def dry_run(configfile: Path, cwd: Path = ROOT) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "snakemake", "-n", "--cores", "2", "--configfile", str(configfile)],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=300,
    )


@pytest.fixture(scope="module")
def every_key_plan(tmp_path_factory) -> str:
    tmp = tmp_path_factory.mktemp("every-key")
    configfile = tmp / "every-key.yaml"
    configfile.write_text(json.dumps(every_key_config(tmp)))
    proc = dry_run(configfile)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-4000:]
    return out


def test_a_config_with_every_key_plans_through_snakemake(every_key_plan):
    jobs = set(re.findall(r"^rule (\w+):", every_key_plan, flags=re.MULTILINE))
    # Every key reached its rules: training checkpoints, attribution, attribution patching, the
    # mechanism stages.
    expected = {"train_model", "share_tokens", "ablate", "repair_detail", "neuron_effects"}
    expected |= {"atp", "atp_summary", "atp_table", "set_ablate"}
    # ablation_sets on running text, every model, ablation and shard; a task's frozen LayerNorm.
    assert "results/m-train/sets/resample/shard-000.zarr" in every_key_plan
    assert "results/m-train/tasks/t-induction/ablation/zero-frozen-ln.zarr" in every_key_plan
    assert expected | {"self_reinforcement", "training_self_repair", "head_explorer"} <= jobs
    tasks = {"task_prompts", "task_metric", "task_ablate", "task_set_ablate", "task_summary"}
    tasks |= {"task_backups", "task_self_repair_per_head", "task_repair_bars", "task_explorer"}
    tasks |= {"task_atp", "task_methods", "method_table", "method_seeds"}
    assert tasks <= jobs
    # tasks.<name>.prompt_seeds: a task per seed, their tables summarised under the task's name
    assert "results/gpt2-small/tasks/t-coax@seed5/methods/movers.zarr" in every_key_plan
    assert "results/gpt2-small/tasks/t-coax/tables/methods-movers-seeds.csv" in every_key_plan
    # tasks.<name>.methods: its EAP-IG steps reach task_methods, its anchors method_table
    methods = every_key_plan[every_key_plan.index("rule task_methods:") :]
    assert "t-ioi/methods/movers.zarr" in methods.split("\n\n")[0]
    # tasks.<name>.ablation_sets.<set>: {induction_score_top: k}: picked from task_metric's
    # metric.json, which the set's jobs (only theirs) read
    lines = every_key_plan.splitlines()

    def inputs_of(output: str) -> str:  # the job's input line, just above its output line
        return lines[lines.index(f"    output: results/{output}") - 1]

    picked = inputs_of("m-train/tasks/t-induction/methods/strongest.zarr")
    assert "results/m-train/tasks/t-induction/metric.json" in picked
    assert "metric.json" in inputs_of("m-train/tasks/t-induction/sets/corrupted.zarr")
    assert "metric.json" not in inputs_of("gpt2-small/tasks/t-ioi/methods/movers.zarr")
    # {direct_effect_top: k} (any task): picked from the task's clean store, which only the jobs
    # of a set so picked read
    largest = inputs_of("gpt2-small/tasks/t-ioi/methods/largest.zarr")
    assert (
        "results/gpt2-small/tasks/t-ioi/clean/shard-000.zarr" in largest
        and "metric.json" not in largest
    )
    assert "clean/shard-000.zarr" in inputs_of("gpt2-small/tasks/t-ioi/sets/corrupted.zarr")
    assert "clean/shard-000.zarr" not in inputs_of("gpt2-small/tasks/t-ioi/methods/movers.zarr")
    assert "clean/shard-000.zarr" not in inputs_of(
        "m-train/tasks/t-induction/methods/strongest.zarr"
    )
    # models[].tasks_only: trained (its n_ctx and tie_embeddings reach train_model) and
    # measured on its task; nothing of the text path
    assert "results/m-task/tasks/t-induction/metric.json" in every_key_plan
    train = every_key_plan[every_key_plan.index("output: resources/models/m-task") :]
    assert "results/m-task/training.json" in train.split("\n\n")[0]
    own = set(re.findall(r"results/m-task/[^\s,]+", every_key_plan))
    assert {p for p in own if not p.startswith("results/m-task/tasks/")} == {
        "results/m-task/training.json"
    }
    assert "results/explorer/m-task.html" not in every_key_plan
