"""The bytes the planned jobs write under results/ (selfrepair.config.storage): the store
formulas against hand-computed numbers, the two ablate layouts against each other at the paper's
shapes, model sizes from the config, the hub cache or nowhere ("unknown"), and the workflow's
own path: a real `snakemake --cores 1` prints the table in its onstart and, when the disk lacks
the bytes, stops in one line before any job."""

from __future__ import annotations

import io
import json
import math
import os
import shutil
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml
from helpers import (
    REDUCED_DEMO_CONFIGS,
    ROOT,
    load,
    merged,
    reduced_demo_config,
    rule_texts,
    rule_texts_of,
    snakemake,
)

import selfrepair.config as sr_config
from selfrepair.catalogue import Shapes
from selfrepair.config import disk, storage
from selfrepair.config.layout import n_predictions, n_shards, predictions, shard_bounds

# Each rule's rules file, as Snakemake gives it with a planned job (job.rule.snakefile).
RULES = ROOT / "workflow" / "rules"
RULE_FILES = {rule: smk for smk in RULES.glob("*.smk") for rule in rule_texts_of(smk.name)}


def shapes(n_layers: int, n_heads: int, d_mlp: int | None = None) -> Shapes:
    """What a store's shapes need of a model."""
    return Shapes(n_layers=n_layers, n_heads=n_heads, d_mlp=d_mlp)


def reduced_demo(**engine) -> tuple[dict, dict]:
    """The reduced demo's config as Snakemake merges it (config.yaml, then demo.yaml and its
    overlay in .test/), validated, and its model entries."""
    config = merged(load("config.yaml"), reduced_demo_config())
    config["engine"].update(engine)
    return config, sr_config.validate_run(config)


def job(rule: str, output: list[str] | dict[str, str], **wildcards) -> SimpleNamespace:
    """A planned job as the estimate reads it (Snakemake's: rule.name, wildcards, output by
    name, log, benchmark)."""
    name = "/".join([rule, *wildcards.values()])
    return SimpleNamespace(
        rule=SimpleNamespace(name=rule, snakefile=str(RULE_FILES[rule])), wildcards=wildcards,
        output=output,
        log=[f"results/logs/{name}.log"], benchmark=f"results/benchmarks/{name}.tsv",
    )  # fmt: skip


# --- the formulas, by hand ----------------------------------------------------------------------


def test_store_formulas_match_hand_computed_numbers_for_a_toy_shape():
    toy = shapes(n_layers=2, n_heads=3, d_mlp=16)  # 6 heads, 6 + 2 + 1 = 9 components
    rows, seq_len = 4, 5
    tokens = predictions(rows, seq_len)  # 4 rows x 4 predictions
    assert tokens == 16
    # 8 HEAD_VARIABLES x 4 bytes x 6 heads x 16 tokens, logit_clean and ln_scale_clean per
    # token, the resample partner (int64) per row
    assert storage.all_ablation_bytes(toy.heads, tokens, rows) == 3072 + 128 + 32
    # 7 per-token variables, de_head per head, de_attn_bias and de_mlp per layer: 17 float32
    assert storage.clean_bytes(toy, tokens) == 4 * 17 * 16
    # per head: 2 x 9 float64 component sums, 2 int64 counts, 2 x 7 float64 totals; a bool per
    # (layer, component)
    assert storage.repair_sums_bytes(toy) == 6 * (18 + 2 + 14) * 8 + 2 * 9
    # per kept token: 9 components and 7 totals (float32), 4 int64 indices
    assert storage.detail_bytes(toy, n_heads=2, k=10) == 2 * 10 * (16 * 4 + 32)


def test_top_layout_formula_matches_a_hand_computed_number():
    # k_shard = ceil(0.02 x 1000) x 500 / 1000 = 10 top tokens per head in this shard
    expected = (
        6 * 10 * (8 * 4 + 4)  # each head's top tokens: 8 float32 and an int32 token number
        + 8 * 500 * 32  # every token of 8 figure heads
        + 6 * 8 * 16  # per head 8 float64 sums and int64 counts
        + 6 * 100 * 16  # the bootstrap's float64 total and kept count per resample
        + 6 * 10 * 8  # two float32 row sums per (head, row)
        + 500 * 8  # logit_clean and ln_scale_clean per token
        + 10 * 8  # the resample partner per row
        + 6 * 2 * 20 * (16 + 12 + 2 * 24 * 4)  # the explorer's candidates with their windows
    )
    got = storage.top_ablation_bytes(6, 1000, 500, 10, 0.02, 100, 20, 24, n_figure_heads=8)
    assert got == expected == 197_888
    assert storage.top_ablation_bytes(6, 1000, 500, 10, 0.02, 100, 20, 24) == (
        expected - 8 * 500 * 32
    )


@pytest.mark.parametrize("name, layers, heads", [("gpt2-small", 12, 12), ("pythia-410m", 24, 16)])
def test_all_stores_more_than_top_at_the_paper_shapes(name, layers, heads):
    paper = load("config.yaml")
    data = {**paper["data"], "shard_rows": 1024}
    n_model = n_predictions(data)
    for shard in range(n_shards(data)):
        start, stop = shard_bounds(data, shard)
        tokens = predictions(stop - start, data["seq_len"])
        every = storage.all_ablation_bytes(layers * heads, tokens, stop - start)
        top = storage.top_ablation_bytes(
            layers * heads, n_model, tokens, stop - start, 0.02, 1000, 20, 24
        )
        assert every > 4 * top, (name, shard, every, top)


def ablate_job(shard: str, ablation: str = "resample") -> SimpleNamespace:
    """One kind's job (checkpoint_ablate's form: an {ablation} wildcard), sized as ablate's."""
    outputs = {
        "attribution": f"results/tiny-gpt2/attribution/{ablation}/shard-{shard}.zarr",
        "heads": f"results/tiny-gpt2/ablation/{ablation}/shard-{shard}.zarr",
    }
    return job("checkpoint_ablate", outputs, model="tiny-gpt2", ablation=ablation, shard=shard)


VARIANTS = ["resample", "mean", "zero", "resample-frozen-ln"]  # the reduced demo's


def all_kinds_job(shard: str) -> SimpleNamespace:
    """Rule ablate's job: every variant of one shard, its stores by name as lists."""
    outputs = {
        "attribution": [f"results/tiny-gpt2/attribution/{a}/shard-{shard}.zarr" for a in VARIANTS],
        "heads": [f"results/tiny-gpt2/ablation/{a}/shard-{shard}.zarr" for a in VARIANTS],
    }
    return job("ablate", outputs, model="tiny-gpt2", shard=shard)


@pytest.mark.parametrize("store_tokens", ["all", "top"])
def test_an_ablate_job_of_every_variant_is_their_one_kind_jobs(store_tokens):
    """Rule ablate writes every variant's stores: its array bytes are the one-kind jobs' summed
    (the kept heads differ by kind under top), its bytes on disk too but for block rounding."""
    config, models = reduced_demo(store_tokens=store_tokens)
    run = storage._Run(config, models)
    for shard in ("000", "001"):
        ones = [ablate_job(shard, a) for a in VARIANTS]
        every = storage.job_data_bytes(config, models, all_kinds_job(shard))
        assert every == sum(storage.job_data_bytes(config, models, j) for j in ones)
        on_disk = storage.job_bytes(run, "ablate", {"model": "tiny-gpt2", "shard": shard},
                                    all_kinds_job(shard).output)  # fmt: skip
        one_disk = [storage.job_bytes(run, j.rule.name, j.wildcards, j.output) for j in ones]
        # in whole blocks: the job's arrays count in its first store, so they round apart
        assert on_disk["results"] == pytest.approx(sum(d["results"] for d in one_disk), rel=0.01)
    assert len({storage.job_data_bytes(config, models, j) for j in ones}) > 1 or (
        store_tokens == "all"
    )


def test_one_ablate_job_is_its_stores_shapes_and_top_is_smaller():
    rows, tokens = 32, predictions(32, 32)  # a shard: 32 of 64 rows of 32 tokens
    dims = shapes(4, 4, 4 * 32)
    every = storage.all_ablation_bytes(16, tokens, rows) + storage.repair_sums_bytes(dims)
    config, models = reduced_demo(store_tokens="all")
    for shard in ("000", "001"):
        assert storage.job_data_bytes(config, models, ablate_job(shard)) == every

    config, models = reduced_demo(store_tokens="top")
    top = {s: storage.job_data_bytes(config, models, ablate_job(f"00{s}")) for s in "01"}
    # shard 000: the training figure reads every token of it (checkpoint_shards: 1)
    assert top["0"] == every
    resamples = config["figures"]["bootstrap"]["resamples"]
    kept = 2  # Fig 16-18's two heads, picked in tiny-gpt2
    assert top["1"] == storage.repair_sums_bytes(dims) + sr_config.top_ablation_bytes(
        16, n_predictions(config["data"]), tokens, rows, 0.02, resamples, 20, 24, kept
    )
    assert top["1"] < every
    # the frozen-LayerNorm variant: no figure reads a head of it per token
    frozen = storage.job_data_bytes(config, models, ablate_job("001", "resample-frozen-ln"))
    kept_bytes = kept * tokens * 8 * 4  # every token of 2 heads, 8 float32 variables
    assert frozen == top["1"] - kept_bytes


def test_per_token_heads_are_kept_in_the_variants_their_figures_read():
    config, _ = reduced_demo()
    config["ablations"] = ["mean", "resample", "zero"]
    config["figures"]["ablation"] = "mean"
    assert sr_config.per_token_ablations(config, "fig03") == ["mean"]
    for key in ("fig05", "fig04", "fig16_18"):
        assert sr_config.per_token_ablations(config, key) == ["mean", "resample", "zero"]


@pytest.mark.parametrize("top_graddrop", [True, False])
def test_an_atp_job_keeps_graddrop_per_row_combined_and_per_layer_summed(top_graddrop):
    config, models = reduced_demo(atp_top_graddrop=top_graddrop)
    # one job per shard writes the store of each of the config's 3 ablations
    output = {"atp": [f"results/tiny-gpt2/atp/{a}/shard-000.zarr" for a in config["ablations"]]}
    atp = job("atp", output, model="tiny-gpt2", shard="000")
    heads, layers, rows, top = 16, 4, 32, int(top_graddrop)
    expected = len(config["ablations"]) * (
        heads * rows * (4 * (3 + top) + 8)  # atp_row, atp_top, GradDrop combined; n_top (int64)
        + rows * 2 * 4  # metric_clean and n_scored
        + layers * heads * 8 * (1 + top)  # GradDrop summed over the rows per dropped layer
    )
    assert len(config["ablations"]) == 3
    named = storage.named_paths(output)
    assert named == [("atp", p) for p in output["atp"]]
    assert storage.job_data_bytes(config, models, atp) == expected


def test_a_checkpoint_counts_under_its_model_and_figures_as_files_in_blocks():
    config, models = reduced_demo()
    jobs = [
        job("clean_cache", {"clean": "results/tiny-pythia@step50/clean/shard-000.zarr"},
            model="tiny-pythia@step50", shard="000"),
        job("fig01", ["results/figures/fig01.pdf", "results/figures/fig01.png"]),
        job("pick_substitute", ["results/tiny-pythia/substitutes/fig03.json"],
            model="tiny-pythia", key="fig03"),
    ]  # fmt: skip
    estimate = sr_config.estimate_storage(config, models, jobs, block=4096)
    # the checkpoint's 992 tokens (32 rows of 31 predictions; checkpoint_shards: 1), a top of 20
    clean = 4 * (7 + 3) * 992 + 16 * 20 * (4 + 4)  # per token; per head 20 DEs and numbers
    assert clean == storage.clean_top_bytes(shapes(4, 4), predictions(32, 32), 20) == 42_240
    assert storage.job_data_bytes(config, models, jobs[0]) == clean
    arrays = disk.STORE_ARRAYS["clean_cache", "clean"][0]
    results = {(m, s): b for (m, s, part), b in estimate.items() if part == "results"}
    # folders: results/{tiny-pythia@step50{,/clean},figures,tiny-pythia{,/substitutes}}, the
    # log's and benchmark's (results/logs/<rule>, results/benchmarks/<rule>, ...) under logs
    assert results == {
        ("tiny-pythia", "clean"): disk.store_disk_bytes(clean, arrays, 1, 4096),
        (storage.NO_MODEL, "figures"): storage.FILE_BYTES[".pdf"] + storage.FILE_BYTES[".png"],
        ("tiny-pythia", "summaries"): storage.FILE_BYTES[".json"],
        (storage.NO_MODEL, "folders"): 6 * 4096,
    }
    assert all(b > 0 for (_, _, part), b in estimate.items() if part == "logs")
    every = storage.job_data_bytes(*reduced_demo(store_tokens="all"), jobs[0])
    assert every == 4 * (7 + 16 + 2 * 4) * 992  # de_head on every token


def test_every_rule_has_the_stage_of_its_rules_file():
    stages = {rule: storage.stage_of(job(rule, [])) for rule in rule_texts()}
    assert stages["ablate"] == "ablation" and stages["share_tokens"] == "data"
    assert stages["atp"] == "atp" and stages["task_ablate"] == "tasks"
    assert stages["training_self_repair"] == "training" and stages["fig01"] == "figures"
    assert set(stages.values()) == set(storage.STAGES)


# --- model sizes ----------------------------------------------------------------------------------


def test_hub_model_sizes_come_from_the_cache_or_are_unknown(tmp_path, monkeypatch):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path))
    config, _ = reduced_demo()
    # A paper model: layers, heads and MLP width from the catalogue.
    assert storage.storage_dims({"name": "pythia-160m"}, config) == shapes(12, 12, 3072)
    assert storage.storage_dims({"name": "Llama-7B"}, config) == shapes(32, 32, 11008)
    # Neither known nor cached: unknown, not guessed.
    assert storage.storage_dims({"name": "opt-125m"}, config) is None
    # Cached: the config.json of the hub cache's snapshot.
    repo = tmp_path / "models--facebook--opt-125m"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text("abc")
    (repo / "snapshots" / "abc").mkdir(parents=True)
    hf = {"model_type": "opt", "num_hidden_layers": 12, "num_attention_heads": 12}
    hf |= {"hidden_size": 768, "ffn_dim": 3072, "vocab_size": 50272}
    (repo / "snapshots" / "abc" / "config.json").write_text(json.dumps(hf))
    assert storage.storage_dims({"name": "opt-125m"}, config) == shapes(12, 12, 3072)


@pytest.mark.parametrize("store_tokens", ["top", "all"])
def test_the_neuron_job_writes_both_stores_and_neurons_only_under_all(store_tokens):
    """neuron_effects: selected.zarr (5 float32 per head and token; per head, selection and
    selected token its row, position and score, under `all` both neuron DEs) and
    reductions.zarr (float64 per neuron and rank, per threshold, per selected token)."""
    config, models = reduced_demo(store_tokens=store_tokens)
    outputs = {
        name: f"results/tiny-gpt2/neurons/{name}.zarr" for name in ("selected", "reductions")
    }
    neuron_job = job("neuron_effects", outputs, model="tiny-gpt2")
    n, d_mlp, tokens = 1, 4 * 32, n_predictions(config["data"])  # Fig 8's substitute
    k = math.ceil(0.02 * tokens)
    thresholds = len(config["mechanisms"]["neurons"]["thresholds"])
    selected = n * (5 * 4 * tokens + 2 * k * 20)
    reductions = n * 2 * (d_mlp * (thresholds + 4) + k * 6) * 8
    neurons = n * 2 * k * 2 * 4 * d_mlp if store_tokens == "all" else 0
    assert storage.job_data_bytes(config, models, neuron_job) == selected + reductions + neurons
    # on disk: both stores' files, selected.zarr chunked per head (1 shown) and selection (2)
    estimate = sr_config.estimate_storage(config, models, [neuron_job], block=4096)
    on_disk = disk.store_disk_bytes(selected + reductions + neurons, 32, 2, 4096)
    on_disk += disk.store_disk_bytes(0, 24, 1, 4096)
    assert estimate["tiny-gpt2", "mechanisms", "results"] == on_disk
    assert "neuron_reductions" not in storage.MECHANISM_OF  # neuron_effects writes both


def test_unknown_sizes_print_unknown_and_a_lower_bound():
    estimate = {("m", "clean", "results"): 3 * 2**30, ("m", "mechanisms", "results"): None}
    estimate |= {("(all)", "figures", "results"): 2**20, ("m", "data", "resources"): 2**20}
    table = sr_config.storage_table(estimate)
    lines = table.splitlines()
    assert lines[0].startswith(
        "The planned jobs take at least 3.0 GB on disk in 4096-byte blocks (results/ at least "
        "3.0 GB, resources/ 1.0 MB; an upper bound"
    )
    assert any(line.split()[-1] == "unknown" and "mechanisms" in line for line in lines)
    assert lines[-1].split() == ["total", "at", "least", "3.0", "GB"]


def test_check_prints_the_table_and_refuses_when_the_disk_lacks_the_bytes(tmp_path):
    config, models = reduced_demo(store_tokens="all")
    clean = job("clean_cache", {"clean": "results/tiny-gpt2/clean/shard-000.zarr"},
                model="tiny-gpt2", shard="000")  # fmt: skip
    out = io.StringIO()
    estimate = sr_config.check_storage(config, models, [clean], tmp_path / "results", out)
    assert out.getvalue().splitlines()[1].split()[:2] == ["tiny-gpt2", "clean"]
    assert {key[:2] for key in estimate} == {("tiny-gpt2", "clean"), ("(all)", "folders")}
    free = shutil.disk_usage(tmp_path).free
    huge = {**config["data"], "n_tokens": 4 * free // 100, "shard_rows": 2**40}
    missing = tmp_path / "not" / "yet" / "results"  # the free space of its nearest folder
    with pytest.raises(sr_config.ConfigError) as info:
        sr_config.check_storage({**config, "data": huge}, models, [clean], missing, out)
    message = str(info.value)
    assert "\n" not in message and message.startswith("config key engine.store_tokens: ")
    assert f"but {tmp_path} has" in message and "set engine.store_tokens: top" in message
    block = os.statvfs(tmp_path).f_frsize
    # its parts, and the free bytes: "(results/ 1.2 GB, resources/ 0 B, logs 76.0 KB) but ..."
    assert f"on disk in {block}-byte blocks (results/ " in message and ", logs " in message
    assert f"({free // 2**20:,}" not in message or "free" in message
    assert "bytes) free;" in message


# --- through the workflow -------------------------------------------------------------------------


def run_demo(workdir: Path, overlay: dict, *args: str):
    """`snakemake ARGS --cores 1` on the reduced demo plus overlay, in workdir."""
    extra = workdir / "overlay.yaml"
    extra.write_text(yaml.safe_dump(overlay))
    snakefile = str(ROOT / "workflow" / "Snakefile")
    return snakemake(
        *args, "--cores", "1", "--snakefile", snakefile, "--directory", str(workdir),
        "--configfile", *(str(ROOT / c) for c in REDUCED_DEMO_CONFIGS), str(extra), cwd=workdir, timeout=300,
    )  # fmt: skip


def test_a_run_the_disk_cannot_hold_stops_before_any_job(tmp_path):
    # About 4 kB per token (16 heads x 32 bytes x 4 ablations x 2 models): more than is free.
    n_tokens = math.ceil(shutil.disk_usage(tmp_path).free / 1000)
    rows = math.ceil(n_tokens / 32)
    proc = run_demo(tmp_path, {"data": {"n_tokens": n_tokens, "shard_rows": rows // 2 + 1}})
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0, out[-3000:]
    lines = [line for line in out.splitlines() if line.startswith("config key ")]
    assert len(lines) == 1 and lines[0].startswith("config key engine.store_tokens: the planned")
    assert f"{tmp_path} has" in lines[0] and "fewer data.n_tokens" in lines[0], lines
    assert "The planned jobs take about" in out and "tiny-gpt2    ablation" in out
    assert "(results/ " in lines[0] and "resources/ " in lines[0] and "logs " in lines[0]
    assert not (tmp_path / "results").exists() and not (tmp_path / "resources").exists()


def test_a_run_that_fits_prints_the_table_and_runs(tmp_path):
    proc = run_demo(tmp_path, {}, "resources/tokenizers/stdlib-bpe")
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-3000:]
    # the tokenizer's folder and files under resources/, its log and Snakemake's records
    assert "The planned jobs take about " in out and "(results/ " in out, out[-3000:]
    assert "tiny-gpt2" not in out.split("The planned jobs take")[1].split("total")[0]
    assert "ConfigError" not in out and "Traceback" not in out
    assert (tmp_path / "resources" / "tokenizers" / "stdlib-bpe").is_dir()


def test_a_dry_run_plans_without_a_word_from_the_check(tmp_path):
    proc = run_demo(tmp_path, {}, "-n")
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-3000:]
    # Snakemake runs no onstart handler in a dry run: no table, no refusal, nothing written.
    assert "planned jobs take" not in out and "ConfigError" not in out and "Traceback" not in out
    assert not (tmp_path / "results").exists()


# --- a prompts task, sized from its file before any tokenizer --------------------------------------


def test_a_prompts_task_is_sized_from_its_file_not_unknown(tmp_path):
    """A prompts file's task stores are sized from its lines (n prompts, the longest prompt's
    bytes + 3 tokens, at most the context + 1), so the table never says "tasks unknown";
    ten times the lines, ten times the bytes."""
    from selfrepair.config.tasks import task_shape

    lines = [{"prompt": "x = " + "y" * (i % 7), "answer": " z"} for i in range(40)]
    small, large = tmp_path / "small.jsonl", tmp_path / "large.jsonl"
    small.write_text("".join(json.dumps(x) + "\n" for x in lines))
    large.write_text("".join(json.dumps(x) + "\n" for x in lines * 10))
    config, models = reduced_demo()
    sizes = {}
    for path in (small, large):
        config["tasks"] = {"mine": {"type": "prompts", "file": str(path), "ablations": ["mean"]}}
        config = merged(load("config.yaml"), merged(reduced_demo_config(), config))
        models = sr_config.validate_run(config)
        spec = config["tasks"]["mine"]
        assert task_shape(config, spec, models["tiny-gpt2"]) == (
            len(path.read_text().split("\n")) - 1,
        ) * 2 + (13,)
        w = {"model": "tiny-gpt2", "task": "mine", "task_ablation": "mean"}
        jobs = [job(rule, {"heads": f"results/tiny-gpt2/tasks/mine/{rule}.zarr"}, **w)
                for rule in ("task_prompts", "task_ablate", "task_summary")]  # fmt: skip
        clean = {"model": "tiny-gpt2", "dataset": "tasks/mine/", "shard": "000"}
        jobs.append(
            job(
                "clean_cache",
                {"clean": "results/tiny-gpt2/tasks/mine/clean/shard-000.zarr"},
                **clean,
            )
        )
        estimate = storage.estimate_storage(config, models, jobs)
        assert None not in estimate.values()
        sizes[path.name] = storage.data_bytes(storage._Run(config, models), "task_prompts", w)
        table = sr_config.storage_table(estimate)
        assert "unknown" not in table and "tiny-gpt2" in table
    assert sizes["large.jsonl"] == 10 * sizes["small.jsonl"] == 10 * 40 * 13 * 24
    long = [{"prompt": "y" * 500, "answer": " z"}] * 2  # clipped at the context + 1
    (tmp_path / "long.jsonl").write_text("".join(json.dumps(x) + "\n" for x in long))
    spec = {"type": "prompts", "file": str(tmp_path / "long.jsonl")}
    assert task_shape(config, spec, models["tiny-gpt2"]) == (2, 2, config["data"]["seq_len"] + 1)


def test_a_hub_models_context_comes_from_the_cache(tmp_path, monkeypatch):
    """model_context of a hub model: its cached config.json's (a prompt beyond it is then
    refused before the first job), None when not cached."""
    from huggingface_hub import constants

    from selfrepair.config.tasks import model_context

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path))
    config, _ = reduced_demo()
    assert model_context(config, {"name": "gpt2-small"}) is None
    repo = tmp_path / "models--gpt2"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text("abc")
    (repo / "snapshots" / "abc").mkdir(parents=True)
    hf = {"model_type": "gpt2", "n_layer": 2, "n_head": 2, "n_embd": 8, "n_positions": 24}
    (repo / "snapshots" / "abc" / "config.json").write_text(json.dumps(hf | {"vocab_size": 50}))
    assert model_context(config, {"name": "gpt2-small"}) == 24
