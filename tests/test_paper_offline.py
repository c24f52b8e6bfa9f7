"""The paper's own configuration, run end to end offline: config/config.yaml with the size-only
overlay .test/config/paper-ci.yaml (gpt2-small and pythia-160m, official names, the paper's heads)
and the paper's Llama-7B (config/paper-llama.yaml, at CI size .test/config/paper-llama-ci.yaml: a local
checkpoint by `path`), through a Hugging Face cache filled by tools/offline_hub.py (random
weights, biases and norm weights drawn too, real configs and tokenizer sizes;
NeelNanda/pile-10k as `hf download` leaves it; the
Llama-7B stand-in a folder with its config.json's layer and head counts, reduced widths), with
HF_HUB_OFFLINE=1.

Checked: the stores' provenance names the official models, their hub revisions and the Pile by
`datasets`; every figure and the report are made; no figure whose paper head lives on these three
models is drawn with a substitute; the engine's clean logit and resample, mean and zero
logit_diff agree with Hugging Face transformers' own forward pass of the same checkpoint (not TransformerLens); Fig 8
has the paper's four panels, and its Llama-7B panel (and the neuron direct effects under it) equal
a recomputation with transformers alone.

Slow: about 10 minutes on 2 free cores (docs/tests.md). SELFREPAIR_PAPER_RUN=<dir> checks a
finished run there instead (its HF_HOME in <dir>/hf).
"""

from __future__ import annotations

import os
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import xarray as xr
from helpers import PAPER_LLAMA_CI, figure_names, link_project

from selfrepair.analysis.shards import stored_values
from selfrepair.config.figures import TASK_FIGURES

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tools"))
import offline_hub  # noqa: E402

import selfrepair.config as sr_config  # noqa: E402
from selfrepair.stages.figures import fig08  # noqa: E402

# The paper's config has no training checkpoints, so no training figure; every other figure.
FIGURES = figure_names(frozen_ln=True, training=False)

pytestmark = pytest.mark.slow

MODELS = {"gpt2-small": "gpt2", "pythia-160m": "EleutherAI/pythia-160m"}
# The overlays, in order (helpers.PAPER_LLAMA_CI says why); the last puts paper-llama.yaml's
# Llama-7B on the stand-in at LLAMA_PATH.
OVERLAYS = PAPER_LLAMA_CI
LLAMA, LLAMA_HEAD, LLAMA_PATH = "llama-7b", (30, 8), "resources/llama-7b-standin"
# The paper's figure heads that are not on gpt2-small or pythia-160m: the overlay names a
# substitute for each, and the caption says so.
SUBSTITUTED = ("pythia-1b", "pythia-410m L22H11", "pythia-410m L17H4", "gpt2-medium L21H1")
# Heads compared with transformers: paper heads on each model, and a first-layer one.
CHECKED_HEADS = {"gpt2-small": [(9, 11), (11, 3), (0, 5)], "pythia-160m": [(11, 2), (7, 8), (0, 5)]}


def environment(hf_home: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "HUGGINGFACE"))}
    env.update(HF_HOME=str(hf_home), HF_HUB_OFFLINE="1")
    return env


def snakemake(run: Path, hf_home: Path, *args: str, timeout: int) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "snakemake", "--configfile", *OVERLAYS, *args],
        cwd=run,
        env=environment(hf_home),
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    (run / f"snakemake{'-report' if '--report' in args else ''}.log").write_text(proc.stderr)
    assert proc.returncode == 0, proc.stderr[-4000:]


@pytest.fixture(scope="module")
def paper_run(tmp_path_factory) -> tuple[Path, Path, dict]:
    """(run directory, HF_HOME, {repo: commit}) of a finished reduced paper run with its report."""
    given = os.environ.get("SELFREPAIR_PAPER_RUN")
    if given:
        run = Path(given)
        hf_home = run / "hf"
    else:
        run = tmp_path_factory.mktemp("paper-run")
        link_project(run)
        hf_home = run / "hf"
        offline_hub.fill(hf_home, list(MODELS), llama=run / LLAMA_PATH)
        snakemake(run, hf_home, "--cores", "2", timeout=3600)
        snakemake(run, hf_home, "--cores", "1", "--report", "report.zip", timeout=900)
    commits = {}
    for repo_dir in (hf_home / "hub").iterdir():
        kind, _, name = repo_dir.name.partition("--")
        commits[name.replace("--", "/")] = (repo_dir / "refs" / "main").read_text().strip()
    return run, hf_home, commits


def test_stores_record_official_models_and_the_pile_by_datasets(paper_run):
    run, _, commits = paper_run
    for model, repo in MODELS.items():
        attrs = xr.open_zarr(run / "results" / model / "tokens.zarr").attrs
        assert attrs["model"] == model and attrs["model_repo"] == repo
        assert attrs["model_revision"] == commits[repo]
        assert attrs["dataset"] == "NeelNanda/pile-10k" and attrs["dataset_split"] == "train"
        assert attrs["dataset_revision"] == commits["NeelNanda/pile-10k"]
        assert attrs["corpus"]["source"] == "hub"
        assert attrs["corpus"]["hub"]["kind"] == "hub_snapshot"
        assert "datasets_version" in attrs["corpus"]
        for store in (run / "results" / model).glob("*/*/shard-000.zarr"):
            assert xr.open_zarr(store).attrs["model_revision"] == commits[repo], store


def test_every_figure_and_the_report(paper_run):
    run, _, _ = paper_run
    made = {p.stem for p in (run / "results" / "figures").glob("*.png")}
    assert made >= FIGURES and "training_self_repair" not in made
    with zipfile.ZipFile(run / "report.zip") as archive:
        names = archive.namelist()
        page = archive.read(next(n for n in names if n.endswith("report.html"))).decode()
    assert {f"{stem}.png" for stem in FIGURES} <= {Path(n).name for n in names}
    # Only the figures whose paper model is absent are substituted, and they say so.
    for paper in SUBSTITUTED:
        assert f"substitute for the paper's {paper}" in page, paper
    assert page.count("substitute for the paper's") == page.count(
        "substitute for the paper's pythia-1b"
    ) + page.count("substitute for the paper's pythia-410m") + page.count(
        "substitute for the paper's gpt2-medium"
    )
    for model in (*MODELS, LLAMA):
        assert f"substitute for the paper's {model}" not in page


def hf_model(hf_home: Path, repo: str):
    from transformers import AutoModelForCausalLM

    snapshot = next(
        (hf_home / "hub" / f"models--{repo.replace('/', '--')}" / "snapshots").iterdir()
    )
    return AutoModelForCausalLM.from_pretrained(str(snapshot), dtype=torch.float32).eval()


def out_projection(model, layer: int):
    """The attention output projection of a layer, whose input holds the heads' z side by side
    (GPT-2: c_proj; GPT-NeoX: dense)."""
    if hasattr(model, "transformer"):
        return model.transformer.h[layer].attn.c_proj
    return model.gpt_neox.layers[layer].attention.dense


def correct_centred(logits: torch.Tensor, tokens: torch.Tensor) -> np.ndarray:
    """Centred logit (minus the mean over the vocabulary) of each next token, [row, pos]."""
    centred = logits - logits.mean(-1, keepdim=True)
    return centred[:, :-1].gather(-1, tokens[:, 1:, None])[..., 0].double().numpy()


def replacement_z(ref, ablation: str, layer: int, z: torch.Tensor, source, include_bos: bool):
    """What transformers' input of a layer's attention output projection becomes under an
    ablation, on every head ([rows, tok, heads x d_head], z that projection's clean input):
    resample, the partner row's; mean, its mean over rows and the positions the measured pass
    reads (all but the last, a target only); zero, TransformerLens' z = 0, which is transformers'
    z equal to the value bias plus the first norm's bias through W_V (value_offset: folded into
    b_O by TransformerLens)."""
    from selfrepair.reference.atp import hf_layers, value_offset

    if ablation == "resample":
        return z[source]
    if ablation == "mean":
        return z[:, 0 if include_bos else 1 : -1].mean((0, 1)).expand_as(z)
    blocks, *_ = hf_layers(ref)
    return value_offset(ref, blocks[layer]).detach().expand_as(z)


@pytest.mark.parametrize("ablation", ["resample", "mean", "zero"])
@pytest.mark.parametrize("model", list(MODELS))
def test_clean_and_ablated_numbers_match_transformers(paper_run, model, ablation):
    """logit_clean and each ablation's logit_diff against transformers' forward pass: the
    head's slice of the output projection's input replaced (replacement_z: the partner row's,
    the mean over the read positions, or the value bias, where the stand-ins' drawn biases make
    TransformerLens' zero differ from transformers'), the correct token's centred logit
    compared."""
    run, hf_home, _ = paper_run
    results = run / "results" / model
    tokens = torch.from_numpy(xr.open_zarr(results / "tokens.zarr").tokens.values.astype(np.int64))
    clean = xr.open_zarr(results / "clean" / "shard-000.zarr")
    ablated = xr.open_zarr(results / "ablation" / ablation / "shard-000.zarr")
    rows = tokens[: clean.sizes["batch"]]
    source = (
        torch.as_tensor(ablated.resample_source.values).long()
        if "resample_source" in ablated
        else None
    )
    include_bos = bool(int(ablated.attrs["mean_include_bos"]))
    ref = hf_model(hf_home, MODELS[model])
    d_head = ref.config.hidden_size // (
        ref.config.n_head if hasattr(ref.config, "n_head") else ref.config.num_attention_heads
    )
    with torch.no_grad():
        clean_logits = ref(rows).logits
    logit_clean = correct_centred(clean_logits, rows)
    scale = np.abs(logit_clean).max()
    assert scale > 0
    err = np.abs(clean.logit_clean.values - logit_clean).max()
    print(f"{model}: |logit_clean| up to {scale:.3g}, off by {err:.2g}")
    assert err <= 1e-5 * max(1, scale)
    for layer, head in CHECKED_HEADS[model]:
        proj = out_projection(ref, layer)
        kept = {}
        hook = proj.register_forward_pre_hook(
            lambda module, args, kept=kept: kept.update(z=args[0].clone())
        )
        with torch.no_grad():
            ref(rows)
        hook.remove()
        part = slice(head * d_head, (head + 1) * d_head)
        new = replacement_z(ref, ablation, layer, kept["z"], source, include_bos)

        def ablate(module, args, part=part, new=new):
            x = args[0].clone()
            x[..., part] = new[..., part]
            return (x,)

        hook = proj.register_forward_pre_hook(ablate)
        with torch.no_grad():
            expected = correct_centred(ref(rows).logits, rows) - logit_clean
        hook.remove()
        # what the store keeps: every token, or (engine.store_tokens: top) the top tokens
        got = stored_values(ablated, "logit_diff", layer, head)
        kept = np.isfinite(got)
        assert kept.any(), (model, layer, head)
        size = np.abs(expected).max()
        assert size > 1e-3, (model, layer, head)  # the ablation changes the logits
        err = np.abs(got[kept] - expected[kept]).max()
        print(
            f"{model} {ablation} L{layer}H{head}: |logit_diff| up to {size:.3g}, off by {err:.2g}"
        )
        assert err <= 1e-5 + 2e-4 * size, (model, layer, head, err, size)


# --- config/ioi.yaml offline: IOI on gpt2-small (the same cache) ---------------------------------

IOI_CONFIGS = ("config/ioi.yaml", ".test/config/ioi.yaml")
IOI = "results/gpt2-small/tasks/ioi"
# The task's outputs only (its paper path is paper-ci's; tests/test_tasks_config.py plans the
# whole run): the summary and joint ablation, the table, the figures and the explorer page.
IOI_TARGETS = [
    *(f"{IOI}/{kind}/corrupted.zarr" for kind in ("summary", "sets")),
    f"{IOI}/tables/backup_heads.csv",
    f"{IOI}/tables/methods-name_movers.csv",
    *(f"{IOI}/figures/{stem}.png" for stem in (*TASK_FIGURES, "methods-name_movers")),
    "results/explorer/tasks/ioi/gpt2-small.html",
]


@pytest.fixture(scope="module")
def ioi_run(request, tmp_path_factory) -> tuple[Path, Path]:
    """(run directory, HF_HOME) of a finished run of config/ioi.yaml at CI size
    (.test/config/ioi.yaml) through the paper run's cache; SELFREPAIR_IOI_RUN=<dir> checks a
    finished run there instead (its HF_HOME in <dir>/hf)."""
    given = os.environ.get("SELFREPAIR_IOI_RUN")
    if given:
        return Path(given), Path(given) / "hf"
    _, hf_home, _ = request.getfixturevalue("paper_run")
    run = tmp_path_factory.mktemp("ioi-run")
    link_project(run)
    proc = subprocess.run(
        [sys.executable, "-m", "snakemake", "--cores", "2", *IOI_TARGETS, "--configfile"]
        + list(IOI_CONFIGS),
        cwd=run,
        env=environment(hf_home),
        capture_output=True,
        text=True,
        timeout=3600,
    )
    (run / "snakemake.log").write_text(proc.stderr)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return run, hf_home


def test_ioi_outputs_and_backup_table(ioi_run):
    from selfrepair.analysis.ranking import roc_auc
    from selfrepair.analysis.tasks import joint_de_rise

    run, _ = ioi_run
    task = run / IOI
    for stem in TASK_FIGURES:
        assert (task / "figures" / f"{stem}.png").stat().st_size > 1000, stem
    assert (run / "results" / "explorer" / "tasks" / "ioi" / "gpt2-small.html").exists()
    prompts = xr.open_zarr(task / "prompts.zarr")
    assert prompts.sizes["prompt"] == 8 and len(prompts.attrs["names"]) >= 5
    table = pd.read_csv(task / "tables" / "backup_heads.csv")
    joint = table[table.source == "set"]
    assert set(joint.set) == {"name_movers"} and "expected_backup" in joint
    sets = xr.open_zarr(task / "sets" / "corrupted.zarr")
    expected = ["L10H10", "L10H6", "L10H2", "L10H1", "L11H2", "L9H7", "L9H0", "L11H9"]
    auc = roc_auc(joint_de_rise(sets, "name_movers"), expected)
    assert joint.roc_auc_joint_de_rise.iloc[0] == pytest.approx(auc, abs=1e-6)
    assert 0 <= auc <= 1
    # the 118 heads at or below layer 9 (L9H0, L9H7 among them) tie at 0: a cap of 1 - 58 / 532
    assert joint.tied_at_zero.iloc[0] == 118
    assert joint.roc_auc_cap.iloc[0] == pytest.approx(1 - 58 / 532, abs=1e-6)
    low, high = joint.roc_auc_joint_de_rise_low.iloc[0], joint.roc_auc_joint_de_rise_high.iloc[0]
    assert low <= auc <= high
    print(f"IOI on random gpt2-small: ROC-AUC {auc:.3f} (joint), meaningless on random weights")


def test_ioi_method_table(ioi_run):
    """The method comparison of the name movers' set (rules task_methods, method_table): every
    method of analysis.methods ranked against the 8 backups; the table's ROC-AUC equals one
    recomputed from the store."""
    from selfrepair.analysis.methods import method_scores
    from selfrepair.analysis.ranking import roc_auc
    from selfrepair.stages.methods import methods_per_token

    run, _ = ioi_run
    task = run / IOI
    table = pd.read_csv(task / "tables" / "methods-name_movers.csv", index_col="method")
    assert (task / "tables" / "methods-name_movers.html").exists()
    for suffix in ("png", "pdf"):
        assert (task / "figures" / f"methods-name_movers.{suffix}").stat().st_size > 1000
    ds = xr.open_zarr(task / "methods" / "name_movers.zarr").load()
    assert ds.sizes["candidate"] == 141 and ds.attrs["steps"] == 5
    means = {k: v.mean(-1) for k, v in methods_per_token(ds).items()}
    expected = ["L10H10", "L10H6", "L10H2", "L10H1", "L11H2", "L9H7", "L9H0", "L11H9"]
    for method, scores in method_scores(means).items():
        auc = roc_auc(dict(zip(ds.candidate.values, scores, strict=True)), expected)
        row = table.loc[method]
        assert row.roc_auc == pytest.approx(auc, abs=1e-5), method
    assert table.loc["compensation_energy", "coax_roc_auc"] == 0.941
    # AtP*'s GradDrop joins from the task's AtP store (engine.atp), whose AtP per answer is
    # the methods store's, computed apart (engine.atp against engine.methods_grad)
    atp = xr.open_zarr(task / "atp" / "corrupted.zarr").load()
    where = (ds.candidate_layer.values, ds.candidate_head.values)
    np.testing.assert_array_equal(atp.prompt.values, ds.prompt.values)
    np.testing.assert_allclose(atp.atp_token.values[where], ds.atp.values, rtol=1e-3, atol=1e-4)
    graddrop = atp.graddrop_token_combined.values[where].mean(-1)
    auc = roc_auc(dict(zip(ds.candidate.values, graddrop, strict=True)), expected)
    assert table.loc["atp_star_graddrop", "roc_auc"] == pytest.approx(auc, abs=1e-5)
    assert table.loc["atp_star_graddrop", "coax_roc_auc"] == 0.665


def _c_proj_inputs(model, layer: int, rows: torch.Tensor) -> torch.Tensor:
    proj, kept = out_projection(model, layer), {}
    hook = proj.register_forward_pre_hook(lambda m, args: kept.update(z=args[0].clone()))
    with torch.no_grad():
        model(rows)
    hook.remove()
    return kept["z"]


def _logit_diff(model, rows, answer, counter, where) -> np.ndarray:
    with torch.no_grad():
        logits = model(rows).logits.double()
    prompt, pos = where
    return (
        logits[prompt, pos, answer[prompt, pos]] - logits[prompt, pos, counter[prompt, pos]]
    ).numpy()


def test_ioi_logit_difference_matches_transformers_with_the_abc_patch(ioi_run):
    """The clean IOI logit difference, and after patching one name mover's z (then all three
    together) from the ABC prompts, equal transformers' own forward pass with the heads' slices
    of c_proj's input replaced by the ABC run's (no TransformerLens)."""
    run, hf_home = ioi_run
    task = run / IOI
    prompts = xr.open_zarr(task / "prompts.zarr")
    rows = torch.from_numpy(prompts.tokens.values.astype(np.int64))
    corrupted = torch.from_numpy(prompts.corrupted.values.astype(np.int64))
    answer = rows[:, 1:]
    counter = torch.from_numpy(prompts.counter.values.astype(np.int64))
    clean = xr.open_zarr(task / "clean" / "shard-000.zarr")
    where = (clean.prompt.values, clean.position.values)
    ref = hf_model(hf_home, "gpt2")
    d_head = ref.config.hidden_size // ref.config.n_head
    base = _logit_diff(ref, rows[:, :-1], answer, counter, where)
    assert np.abs(clean.logit_clean.values - base).max() <= 1e-4 * max(1, np.abs(base).max())
    heads = {"single": [(9, 9)], "set": [(9, 9), (9, 6), (10, 0)]}
    other = {layer: _c_proj_inputs(ref, layer, corrupted[:, :-1]) for layer in (9, 10)}
    for kind, patched in heads.items():
        hooks = []
        for layer in {la for la, _ in patched}:
            parts = [slice(h * d_head, (h + 1) * d_head) for la, h in patched if la == layer]

            def patch(module, args, parts=parts, z=other[layer]):
                x = args[0].clone()
                for part in parts:
                    x[..., part] = z[..., part]
                return (x,)

            hooks.append(out_projection(ref, layer).register_forward_pre_hook(patch))
        expected = _logit_diff(ref, rows[:, :-1], answer, counter, where) - base
        for hook in hooks:
            hook.remove()
        if kind == "single":
            got = xr.open_zarr(task / "ablation" / "corrupted.zarr").logit_diff.sel(layer=9, head=9)
        else:
            got = xr.open_zarr(task / "sets" / "corrupted.zarr").logit_diff.sel(set="name_movers")
        size = np.abs(expected).max()
        assert size > 1e-3, kind
        err = np.abs(got.values - expected).max()
        print(f"IOI {kind}: |logit diff change| up to {size:.3g}, off by {err:.2g}")
        assert err <= 1e-5 + 2e-4 * size, (kind, err, size)


# --- Llama-7B (config/paper-llama.yaml) ------------------------------------------------------


def run_targets(run: Path, monkeypatch) -> list[dict]:
    """Fig 8's targets as the run's rule got them: the merged config, resolved in the run
    directory (where the stand-in's relative `path` points)."""
    from helpers import SCHEMA, load, load_file, merged

    config = load("config.yaml")
    for overlay in OVERLAYS:
        config = merged(config, load_file(overlay))
    monkeypatch.chdir(run)
    sr_config.validate_run(config, SCHEMA)
    return [t.as_params() for t in sr_config.mechanism_targets(config)["fig08"]]


def test_llama_stores_record_the_local_checkpoint(paper_run):
    """Loaded by `path`, as a user's llama-7b-hf folder: its weights' digest, its tokenizer (BOS
    <s> = 1, EOS </s> = 2, 32,000 tokens) and Llama-7B's 32 layers x 32 heads."""
    import hashlib

    run, _, _ = paper_run
    folder = run / LLAMA_PATH
    digest = hashlib.sha256()
    for weights in sorted(folder.glob("*.safetensors")):
        digest.update(weights.name.encode() + weights.read_bytes())
    attrs = xr.open_zarr(run / "results" / LLAMA / "tokens.zarr").attrs
    assert attrs["model"] == LLAMA and attrs["tokenizer"] == LLAMA_PATH
    assert attrs["model_revision"] == f"sha256:{digest.hexdigest()}"
    assert (attrs["bos_id"], attrs["eos_id"], attrs["vocab_size"]) == (1, 2, 32000)
    assert attrs["dataset"] == "NeelNanda/pile-10k"
    clean = xr.open_zarr(run / "results" / LLAMA / "clean" / "shard-000.zarr")
    assert (clean.sizes["layer"], clean.sizes["head"]) == (32, 32)
    assert clean.attrs["model_revision"] == attrs["model_revision"]


def test_fig08_has_the_papers_four_panels(paper_run, monkeypatch):
    """Llama-7B L30H8 first, as in the paper, then gpt2-small L9H11, pythia-160m L7H8 and
    pythia-410m L17H4's substitute; the captions define Llama's RMSNorm scale and gated neurons."""
    run, _, _ = paper_run
    targets = run_targets(run, monkeypatch)
    stores = [str(run / "results" / t["model"] / "neurons" / "reductions.zarr") for t in targets]
    fig = fig08(stores, targets, ranks=50)
    titles = [ax.get_title() for ax in fig.axes]
    assert titles == [
        "llama-7b L30H8",
        "gpt2-small L9H11",
        "pythia-160m L7H8",
        "pythia-160m L10H11",
    ]
    assert (run / "results" / "figures" / "fig08_neuron_repair_thresholds.png").stat().st_size
    with zipfile.ZipFile(run / "report.zip") as archive:
        page = archive.read(next(n for n in archive.namelist() if n.endswith("report.html")))
    page = page.decode()  # captions sit in JSON there: non-ASCII characters escaped
    # docutils renders what it cannot parse as "System Message" text into the page.
    assert "System Message" not in page, page[page.find("System Message") - 300 :][:600]
    assert "llama-7b normalises with RMSNorm" in page and "RMSNorm scale sqrt(mean(x" in page
    assert "llama-7b's MLP is gated: neuron n's activation is silu(x" in page
    assert "substitute for the paper's pythia-410m L17H4" in page


def llama_effects(folder: Path, rows: torch.Tensor, partner: torch.Tensor) -> dict[str, np.ndarray]:
    """transformers alone (no TransformerLens, no selfrepair): on every token (row, position
    0..n-2), L30H8's clean direct effect and every neuron's clean and resample-ablated direct
    effect in the last MLP layer, as the paper defines them for an RMSNorm model: the component's
    output . u / s, u the unembedding row of the correct token centred over the vocabulary and
    scaled by the final RMSNorm weight, s = sqrt(mean(x^2) + eps) of the clean final residual x.
    A neuron's activation is what the down projection reads (act(gate) x up), its output row the
    down projection's column; the ablation puts the partner row's slice of L30H8 into the input of
    layer 30's output projection."""
    from transformers import AutoModelForCausalLM

    hf = AutoModelForCausalLM.from_pretrained(str(folder), dtype=torch.float32).eval()
    layer, head = LLAMA_HEAD
    d_head = hf.config.hidden_size // hf.config.num_attention_heads
    part = slice(head * d_head, (head + 1) * d_head)
    o_proj = hf.model.layers[layer].self_attn.o_proj
    down = hf.model.layers[-1].mlp.down_proj

    def run(z=None):
        """A forward pass (z: the input of layer 30's output projection to put L30H8's slice
        from); what the down projection, the final norm and the output projection read."""
        kept, hooks = {}, []
        if z is not None:  # first, so that the hooks below see the swapped input

            def swap(module, args):
                new = args[0].clone()
                new[..., part] = z[..., part]
                return (new,)

            hooks.append(o_proj.register_forward_pre_hook(swap))
        hooks += [
            down.register_forward_pre_hook(lambda m, a: kept.update(post=a[0].clone())),
            hf.model.norm.register_forward_pre_hook(lambda m, a: kept.update(x=a[0].clone())),
            o_proj.register_forward_pre_hook(lambda m, a: kept.update(z=a[0].clone())),
        ]
        with torch.no_grad():
            kept["logit"] = torch.from_numpy(correct_centred(hf(rows).logits, rows))
        for hook in hooks:
            hook.remove()
        return kept

    clean = run()
    ablated = run(z=clean["z"][partner])
    assert not torch.equal(ablated["z"], clean["z"])  # the swap reached the projection
    logits = clean.pop("logit"), ablated.pop("logit")
    clean, ablated = ({k: v[:, :-1].double() for k, v in r.items()} for r in (clean, ablated))
    with torch.no_grad():
        w_u = hf.lm_head.weight.double()
        u = ((w_u - w_u.mean(0)) * hf.model.norm.weight.double())[rows[:, 1:]]
        scale = torch.sqrt(clean["x"].pow(2).mean(-1) + hf.config.rms_norm_eps)
        per_unit = torch.einsum("dn,rpd->rpn", down.weight.double(), u) / scale[..., None]
        w_o = o_proj.weight[:, part].double()
        head_de = torch.einsum("dk,rpk,rpd->rp", w_o, clean["z"][..., part], u) / scale
    return {
        "logit_clean": logits[0].numpy(),
        "logit_diff": (logits[1] - logits[0]).numpy(),
        "head_de": head_de.numpy(),
        "neuron_clean": (clean["post"] * per_unit).numpy(),
        "neuron_ablated": (ablated["post"] * per_unit).numpy(),
    }


def top_token_indices(score: np.ndarray, fraction: float) -> np.ndarray:
    """Flat indices (row * positions + position) of the top ceil(fraction x tokens) tokens by
    score, ties to the earlier token, in token order."""
    flat = score.ravel()
    k = max(1, int(np.ceil(fraction * flat.size)))
    return np.sort(np.lexsort((np.arange(flat.size), -flat))[:k])


def test_llama_fig08_panel_equals_transformers(paper_run, monkeypatch):
    """Fig 8's Llama-7B panel, as the figure rule draws it, against transformers alone: L30H8's
    top 2% tokens by clean direct effect, every neuron's clean and ablated direct effect on them
    (to float tolerance; under engine.store_tokens: top, which drops them from selected.zarr,
    their reductions: each neuron's median and each token's best), and for the k-th best
    self-repairing neuron the share of those tokens on which it repairs at least each threshold
    of the head's clean direct effect (exactly, but for a comparison within float error of its
    threshold)."""
    run, _, _ = paper_run
    results = run / "results" / LLAMA
    rows = torch.from_numpy(xr.open_zarr(results / "tokens.zarr").tokens.values.astype(np.int64))
    ablated = xr.open_zarr(results / "ablation" / "resample" / "shard-000.zarr")
    partner = torch.as_tensor(ablated.resample_source.values).long()
    assert len(rows) == len(partner)  # one shard: global rows are the shard's
    ref = llama_effects(run / LLAMA_PATH, rows, partner)
    n_pos = ref["head_de"].shape[1]
    # The path route's clean pass and its resample ablation of L30H8, as for the hub models.
    clean = xr.open_zarr(results / "clean" / "shard-000.zarr")
    for got, expected in (
        (clean.logit_clean.values, ref["logit_clean"]),
        (stored_values(ablated, "logit_diff", *LLAMA_HEAD), ref["logit_diff"]),
    ):
        kept = np.isfinite(got)  # engine.store_tokens: top keeps the head's top tokens
        assert kept.any()
        size = np.abs(expected).max()
        print(f"logit: up to {size:.3g}, off by {np.abs(got[kept] - expected[kept]).max():.2g}")
        assert size > 1e-3 and np.abs(got[kept] - expected[kept]).max() <= 1e-5 + 2e-4 * size

    pick = {"head": "L30H8", "selection": "head_de"}
    selected = xr.open_zarr(results / "neurons" / "selected.zarr").sel(pick)
    fraction = float(selected.attrs["top_fraction"])
    top = top_token_indices(ref["head_de"], fraction)
    got = selected.token_row.values * n_pos + selected.token_pos.values
    np.testing.assert_array_equal(got, top)
    r, p = np.divmod(top, n_pos)
    head_de = ref["head_de"][r, p]
    np.testing.assert_allclose(selected.score.values, head_de, rtol=1e-4, atol=1e-7)
    size = np.abs(ref["neuron_clean"][r, p]).max()
    delta = ref["neuron_ablated"][r, p] - ref["neuron_clean"][r, p]
    if "neuron_de_clean" in selected:  # engine.store_tokens: all keeps every neuron's DEs
        for run_name in ("clean", "ablated"):
            got_de = selected[f"neuron_de_{run_name}"].values
            err = np.abs(got_de - ref[f"neuron_{run_name}"][r, p])
            print(f"neuron DE {run_name}: up to {size:.3g}, off by {err.max():.2g}")
            assert err.max() <= 1e-4 * size, run_name
        got_delta = (selected.neuron_de_ablated - selected.neuron_de_clean).values
        err = np.abs(got_delta - delta).max()
        print(f"neuron self-repair: up to {np.abs(delta).max():.3g}, off by {err:.2g}")
        assert err <= 1e-3 * np.abs(delta).max()
    # Either layout: what neuron_effects reduced them to (top drops the arrays): per neuron its
    # median clean DE, per token the best self-repair (a max: no ranking within float error).
    reduced = xr.open_zarr(results / "neurons" / "reductions.zarr").sel(pick)
    median = np.median(ref["neuron_clean"][r, p], 0)
    err = np.abs(reduced.median_clean_de.values - median).max()
    print(f"neuron median clean DE: up to {np.abs(median).max():.3g}, off by {err:.2g}")
    assert err <= 1e-4 * size
    best = (reduced.top_neuron_de_ablated - reduced.top_neuron_de_clean).values
    err = np.abs(best - delta.max(1)).max()
    print(f"best neuron self-repair: up to {np.abs(delta).max():.3g}, off by {err:.2g}")
    assert err <= 1e-3 * np.abs(delta).max()

    targets = run_targets(run, monkeypatch)
    stores = [str(run / "results" / t["model"] / "neurons" / "reductions.zarr") for t in targets]
    fig = fig08(stores, targets, ranks=50)
    (panel,) = [ax for ax in fig.axes if ax.get_title() == "llama-7b L30H8"]
    thresholds = xr.open_zarr(results / "neurons" / "reductions.zarr").threshold.values
    ranked = -np.sort(-delta, axis=1)[:, :50]
    tol = 1e-4 * np.abs(delta).max()
    drawn = 0
    for line, t in zip(panel.lines, thresholds, strict=True):
        np.testing.assert_array_equal(line.get_xdata(), np.arange(1, 51))
        y = np.asarray(line.get_ydata())
        low = (ranked - tol >= t * head_de[:, None]).mean(0)
        high = (ranked + tol >= t * head_de[:, None]).mean(0)
        assert np.all((low - 1e-6 <= y) & (y <= high + 1e-6)), t  # y: float32 shares
        print(f"threshold {t:.0%}: {int((low != high).sum())} ranks within float error")
        drawn += int((y > 0).sum())
    assert drawn > 10  # the panel shows repair, not only zeros
