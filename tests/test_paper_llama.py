"""The paper's Llama-7B by config (config/paper-llama.yaml), without its weights: the overlay and
its CI-size version agree with the files they build on; a dry run of the paper's run with
Llama-7B's real config.json plans every job and refuses a missing folder naming the key; the
`path` route builds, from that config.json, the very HookedTransformerConfig TransformerLens
builds for its own llama-7b-hf; captions define RMSNorm's scale and a gated MLP's neurons for
such models only; and the GPU-time estimate is FLOPs over the measured engine rate. The run
itself (Fig 8's four panels, the Llama panel against transformers) is tests/test_paper_offline.py.
"""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest
import yaml
from helpers import ROOT, link_project, load, load_test, merged, snakemake

import selfrepair.config as sr_config
from selfrepair.plots.captions import rmsnorm_notes

sys.path.insert(0, str(ROOT / "tools"))
import offline_hub  # noqa: E402

LLAMA_ENTRY_KEYS = {"name", "path", "heads", "resources"}


def llama_entry(config: dict) -> dict:
    (entry,) = [m for m in config["models"] if isinstance(m, dict) and m["name"] == "llama-7b"]
    return entry


def test_ci_overlay_changes_only_the_models_and_the_path():
    """.test/config/paper-llama-ci.yaml: paper-ci.yaml's models, then paper-llama.yaml's
    Llama-7B entry with only its `path` on the stand-in; config/paper-llama.yaml: config.yaml's
    models plus Llama-7B, and Fig 8 as the paper orders it (paper-ci.yaml's substitute for
    pythia-410m's panel only). The CI run gives them in helpers.PAPER_LLAMA_CI's order."""
    paper, llama = load("config.yaml"), load("paper-llama.yaml")
    ci, llama_ci = load_test("paper-ci.yaml"), load_test("paper-llama-ci.yaml")
    assert set(llama_ci) == {"models"} and set(llama) == {"models", "mechanisms"}
    entry = llama_entry(llama)
    assert set(entry) == LLAMA_ENTRY_KEYS and entry["heads"] == [[30, 8]]
    assert llama["models"] == [*paper["models"], entry]
    assert llama_ci["models"] == [*ci["models"], {**entry, "path": "resources/llama-7b-standin"}]
    fig08 = llama["mechanisms"]["neurons"]["fig08"]
    assert set(llama["mechanisms"]) == {"neurons"} and set(llama["mechanisms"]["neurons"]) == {
        "fig08"
    }
    assert [(e["model"], e["heads"]) for e in fig08] == [
        ("llama-7b", [[30, 8]]),
        *[(e["model"], e["heads"]) for e in paper["mechanisms"]["neurons"]["fig08"]],
    ]
    assert [e.get("substitute") for e in fig08[1:]] == [
        e.get("substitute") for e in ci["mechanisms"]["neurons"]["fig08"]
    ]


@pytest.fixture
def llama_7b_folder(tmp_path) -> Path:
    """A run directory whose resources/llama-7b-hf holds Llama-7B's own config.json and an
    empty tokenizer.model (no weights: nothing here loads them)."""
    link_project(tmp_path, test_configs=False)
    folder = tmp_path / "resources" / "llama-7b-hf"
    folder.mkdir(parents=True)
    (folder / "config.json").write_text(json.dumps(offline_hub.LLAMA_7B))
    (folder / "tokenizer.model").write_text("")  # its SentencePiece model, never read here
    return folder


def test_dry_run_plans_the_papers_run_with_llama_7b(llama_7b_folder):
    """`snakemake -n --configfile config/paper-llama.yaml`, the command of docs/llama-7b.md, on Llama-7B's
    config.json: heads and Fig 8's panels check against its 32 x 32 heads; L30H8's jobs are
    planned: 8 clean shards, 8 ablate shards (4 ablation variants each), its neurons and figure."""
    run = llama_7b_folder.parents[1]
    proc = snakemake("-n", "--cores", "1", "--configfile", "config/paper-llama.yaml", cwd=run,
                     timeout=600)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    jobs: dict[str, int] = {}
    rule = None
    for line in proc.stdout.splitlines():
        if line.startswith(("rule ", "localrule ")):
            rule = line.split()[1].rstrip(":")
        elif "wildcards: model=llama-7b" in line:
            jobs[rule] = jobs.get(rule, 0) + 1
    assert jobs["clean_cache"] == 8 and jobs["ablate"] == 8, jobs  # every variant per shard
    assert jobs["neuron_effects"] == 1 and jobs["repair_detail"] == 1, jobs
    assert "fig08" in proc.stdout


def test_dry_run_without_the_weights_folder_names_the_key(llama_7b_folder):
    (llama_7b_folder / "config.json").unlink()
    (llama_7b_folder / "tokenizer.model").unlink()
    llama_7b_folder.rmdir()
    run = llama_7b_folder.parents[1]
    proc = snakemake("-n", "--cores", "1", "--configfile", "config/paper-llama.yaml", cwd=run,
                     timeout=600)  # fmt: skip
    assert proc.returncode != 0
    assert "config key models[llama-7b].path: 'resources/llama-7b-hf' does not exist" in (
        proc.stdout + proc.stderr
    )


def test_dry_run_refuses_too_little_memory_for_llama_7b(llama_7b_folder):
    """config/memory.py's lower bound for Llama-7B's config.json (both float32 copies of its
    6.74e9 parameters while loading, and a batch's logits: 52,346 MB) refuses 52,000 MB before
    any job, naming the key; paper-llama.yaml's 112,000 MB passes (the dry run above)."""
    run = llama_7b_folder.parents[1]
    overlay = load("paper-llama.yaml")
    llama_entry(overlay)["resources"]["mem_mb"] = 52000
    (run / "low-memory.yaml").write_text(yaml.safe_dump(overlay))
    proc = snakemake("-n", "--cores", "1", "--configfile", "config/paper-llama.yaml",
                     "low-memory.yaml", cwd=run, timeout=600)  # fmt: skip
    assert proc.returncode != 0
    out = proc.stdout + proc.stderr
    need = "config key models[llama-7b]: a job of llama-7b needs at least 51.1 GB"
    assert need in out, out[-2000:]
    assert "(6,738,149,376 float32 parameters" in out and "resources.mem_mb is 52,000 MB" in out


def test_path_route_builds_transformer_lens_own_llama_7b_config(llama_7b_folder):
    """From Llama-7B's config.json, the `path` route (load_local_checkpoint's config) gives the
    HookedTransformerConfig TransformerLens gives its llama-7b-hf (the weights-passed-in route,
    from_pretrained("llama-7b", hf_model=...)), in every field but the names."""
    from transformer_lens import loading_from_pretrained as loading

    from selfrepair.models.loading import local_checkpoint_config

    ours = local_checkpoint_config(str(llama_7b_folder)).to_dict()
    theirs = loading.get_pretrained_model_config("llama-7b-hf", fold_ln=True).to_dict()
    differ = {k for k in ours.keys() | theirs.keys() if ours.get(k) != theirs.get(k)}
    assert differ <= {"model_name", "tokenizer_name"}, {k: (ours[k], theirs[k]) for k in differ}
    assert (ours["n_layers"], ours["n_heads"], ours["d_mlp"]) == (32, 32, 11008)
    assert ours["normalization_type"] == "RMSPre" and ours["gated_mlp"]


def test_captions_name_rmsnorm_and_gated_neurons_for_llama_only(llama_7b_folder):
    entry = {"name": "llama-7b", "path": str(llama_7b_folder)}
    assert sr_config.rms_gated_activation(entry) == "silu"
    assert sr_config.rms_gated_activation({"name": "gpt2-small"}) is None
    assert sr_config.rms_gated_activation({"name": "x", "train": {"arch": "gpt2"}}) is None
    gpt2 = llama_7b_folder.parent / "gpt2"
    gpt2.mkdir()
    (gpt2 / "config.json").write_text(json.dumps(offline_hub.MODELS["gpt2-small"]))
    assert sr_config.rms_gated_activation({"name": "g", "path": str(gpt2)}) is None
    assert rmsnorm_notes({}) == [] and rmsnorm_notes({}, neurons=True) == []
    (norm,) = rmsnorm_notes({"llama-7b": "silu"})
    assert norm.startswith("llama-7b normalises with RMSNorm, not LayerNorm")
    assert "sqrt(mean(x²) + ε)" in norm and "centring of each component's output" in norm
    norm2, gated = rmsnorm_notes({"llama-7b": "silu"}, neurons=True)
    assert norm2 == norm
    assert "neuron n's activation is silu(x · W_gate[:, n]) × (x · W_in[:, n])" in gated
    assert "column n of down_proj" in gated


def paper_cost():
    spec = importlib.util.spec_from_file_location("paper_cost", ROOT / "benchmarks/paper_cost.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_gpu_estimate_is_flops_over_the_measured_rate(capsys):
    """At a timed model's own measured rates the estimate gives back its measured time; the
    Llama-7B estimate is its FLOPs for L30H8 over those rates, and says it is an estimate."""
    cost = paper_cost()
    rates_file = ROOT / "benchmarks" / "results" / "paper_cost_h100.txt"
    timings = cost.read_timings(rates_file)
    assert set(timings) == set(cost.ARCHITECTURES)
    config = merged(load("config.yaml"), load("paper-llama.yaml"))
    n_pred = sr_config.n_rows(config["data"]) * 127
    rates = cost.measured_rates(timings, 128)
    for name, (clean_s, ablate_s) in timings.items():
        shapes = cost.shapes_of(name)
        parts = cost.estimate(shapes, 128, n_pred, cost.all_heads(shapes), 4, rates[name])
        assert parts["clean_cache"] == pytest.approx(n_pred * clean_s, rel=1e-9)
        assert parts["ablate"] == pytest.approx(4 * n_pred * ablate_s, rel=1e-9)
    llama = cost.shapes_of("llama-7b")
    clean, ablate = cost.pass_flops(llama, 128, {30: 1})
    assert 12e9 < clean < 15e9  # about 2 x 6.5e9 parameters outside the embedding, plus attention
    parts = cost.estimate(llama, 128, n_pred, {30: 1}, 4, rates["pythia-1b"])
    assert parts["ablate"] == pytest.approx(4 * n_pred * ablate / rates["pythia-1b"][1])
    cost.print_estimate(config, "llama-7b", rates_file)
    out = capsys.readouterr().out
    assert out.startswith("ESTIMATE (not measured) of llama-7b") and "(L30H8)" in out
