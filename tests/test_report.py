"""The demo run builds the full Snakemake report: every figure, with its caption, and the table.

Slow: by default it runs the reduced demo (config/demo.yaml with its overlay
.test/config/config.yaml: the whole DAG of the demo with fewer tokens and training steps) in a
temporary directory, then `snakemake --report`. Point SELFREPAIR_DEMO_RUN at the directory of a
finished run of config/demo.yaml (e.g. the checkout after `snakemake --cores all --configfile
config/demo.yaml`) to build the report from it instead (SELFREPAIR_DEMO_CONFIG: its config files,
space-separated, if not config/demo.yaml).

Fast: the one figure list (selfrepair.config.figures) against the rules, scripts, stage
functions and captions that use it, and the reduced demo against config/demo.yaml.
"""

from __future__ import annotations

import json
import re
import zipfile
from pathlib import Path

import numpy as np
import pytest
import xarray as xr
from helpers import (
    FIGURES,
    TABLES,
    load,
    load_test,
    reduced_demo_config,
    rule_script,
    rule_texts,
    rule_texts_of,
    snakemake,
)

import selfrepair.stages.atp_figures as stage_atp_figures
import selfrepair.stages.figures as stage_figures
import selfrepair.stages.repair_figures as stage_repair_figures
import selfrepair.stages.training as stage_training
from selfrepair.config.figures import FIGURES as FIGURE_LIST
from selfrepair.config.figures import TASK_FIGURES
from selfrepair.engine.clean import decomposition_error
from selfrepair.stages.joblog import missing_provenance
from selfrepair.stages.store import open_zarr
from selfrepair.stages.tasks import TOKENIZER_ONLY

ROOT = Path(__file__).resolve().parents[1]
slow = pytest.mark.slow
# The stage module of the figures beyond the paper's kinds (the others: stages.figures).
STAGE_MODULES = {
    "repair": stage_repair_figures,
    "atp": stage_atp_figures,
    "training": stage_training,
}

# The demo's substitutes picked at run time (results/<model>/substitutes/<key>.json).
PICKS = {"fig03", "fig05", "fig04", "fig16_18", "fig07", "fig08-0", "fig08-1", "fig08-2"} | {
    "fig15",
    "fig09",
}


@slow
def test_demo_run_builds_a_report_with_every_figure_and_the_table(finished_run):
    run, configs = finished_run
    made = {p.stem for p in (run / "results" / "figures").glob("*.png")}
    assert made >= FIGURES
    for stem in made:
        for suffix in (".png", ".pdf"):
            assert (run / "results" / "figures" / f"{stem}{suffix}").stat().st_size > 1000

    report = run / "report.zip"
    # --cores: rules/data.smk sizes threads from workflow.cores, so the DAG needs it.
    proc = snakemake(
        "--cores", "1", "--configfile", *configs, "--report", str(report), cwd=run, timeout=600
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    with zipfile.ZipFile(report) as archive:
        names = archive.namelist()
        html = next(n for n in names if n.endswith("report.html"))
        page = archive.read(html).decode()
    listed = {Path(n).name for n in names}
    assert {f"{stem}.png" for stem in made} <= listed  # every figure made is in the report
    assert TABLES <= listed
    # docutils renders what it cannot parse as "System Message" text into the page.
    assert "System Message" not in page, page[page.find("System Message") - 300 :][:600]
    # The overview lists the models readably: name and where the weights come from.
    assert "<strong>tiny-gpt2</strong>: trained here (gpt2 architecture" in page
    # The "job parameters" panels: readable, without the caption the panel's figure shows.
    params = re.findall(r'"params": *"((?:[^"\\]|\\.)*)"', page)
    assert any(text.startswith("runs: tiny-gpt2 resample, tiny-gpt2 mean") for text in params)
    for text in params:
        assert not any(raw in text for raw in ("[[", "['", "None", "**", "caption")), text
    # Every figure has its caption, stating what was measured; the demo's substitutes say so.
    assert page.count("Measured.") >= len(FIGURES) + 2  # + the table's two files
    # The task figures and tables, their captions stating the clean model on the task.
    tasks = list(reduced_demo_config()["tasks"])
    task_files = {f"{stem}.png" for stem in TASK_FIGURES} | {"backup_heads.csv"}
    assert task_files <= listed
    assert page.count("Clean model on the task") >= 2 * len(tasks) * (len(TASK_FIGURES) + 2)
    for paper in ("pythia-1b", "pythia-410m L22H11", "pythia-160m L11H10"):
        assert f"substitute for the paper's {paper}" in page
    # Picked substitutes: the caption names the picked heads and the values that chose them.
    records = sorted((run / "results").glob("*/substitutes/*.json"))
    assert {p.stem for p in records} >= PICKS
    for path in records:
        record = json.loads(path.read_text())
        heads = ", ".join(f"L{layer}H{head}" for layer, head in record["heads"])
        sentence = f"{record['model']} {heads}, {record['description']}, is a substitute"
        assert sentence in page, sentence
        for value in record["values"]:
            assert f"{value:.2f}" in record["description"]


@slow
def test_demo_clean_direct_effects_sum_to_the_centred_logit(finished_run):
    """Every token of every clean store: the components' direct effects add up to the centred
    correct-token logit within 1e-4."""
    run, _ = finished_run
    stores = sorted((run / "results").glob("*/clean/shard-*.zarr"))
    models = {"tiny-gpt2", "tiny-pythia"}
    checkpoints = {f"{m}@step{s}" for m in models for s in (0, 50, 200)}
    assert {p.parents[1].name for p in stores} == models | checkpoints
    for store in stores:
        ds = xr.open_zarr(store)
        assert ds.sizes["batch"] * ds.sizes["pos"] > 0
        assert np.isfinite(ds.logit_clean.values).all(), store
        assert decomposition_error(ds) <= 1e-4, store


@slow
def test_demo_models_learned_far_below_uniform(finished_run):
    """The trained demo models record a held-out loss far below ln(vocab) (uniform guessing)."""
    run, _ = finished_run
    records = sorted((run / "resources" / "models").glob("*/training.json"))
    assert {p.parent.name for p in records} == {"tiny-gpt2", "tiny-pythia"}
    for path in records:
        record = json.loads(path.read_text())
        vocab = json.loads((path.parent / "config.json").read_text())["vocab_size"]
        assert record["uniform_loss"] == pytest.approx(np.log(vocab), rel=1e-6)
        assert record["heldout_loss"] < 0.8 * record["uniform_loss"], (path, record)
        assert record["heldout_loss"] < record["initial_heldout_loss"] - 1.0, (path, record)


def _record(run: Path, model: str, key: str) -> dict:
    return json.loads((run / "results" / model / "substitutes" / f"{key}.json").read_text())


def _top_de(run: Path, model: str, fraction: float = 0.02) -> np.ndarray:
    """Mean clean DE of each (layer, head) on its top `fraction` of tokens, from the clean
    shards (not the top-token store the pick reads): their DE on every token, or under
    engine.store_tokens: top each shard's best tokens, among which are the top ones."""
    shards = [xr.open_zarr(p) for p in sorted((run / "results" / model / "clean").glob("*.zarr"))]
    n_tokens = sum(ds.sizes["batch"] * ds.sizes["pos"] for ds in shards)
    values = [
        ds.de_head.transpose("layer", "head", "batch", "pos").values
        if "de_head" in ds
        else ds.top_candidate_de_head.transpose("layer", "head", "top_candidate").values
        for ds in shards
    ]
    flat = np.concatenate([v.reshape(v.shape[0], v.shape[1], -1) for v in values], -1)
    k = int(np.ceil(fraction * n_tokens))
    return -np.sort(-flat.astype(np.float64), axis=-1)[..., :k].mean(-1)


def _ranked(values: dict, largest: bool) -> list:
    return sorted(values, key=lambda h: ((-values[h] if largest else values[h]), h))


@slow
def test_demo_picks_are_the_extremes_of_their_criteria(finished_run):
    """Each picked substitute is the best head by the paper's criterion, computed here from the
    shards (largest top-2% clean DE) and from the reinforcement store's per-token effects
    (smallest slope of new on clean DE at the largest scale): the demo's models have 4 layers,
    so late heads are layers 2 and 3 and a Pythia MLP of layer 3 reads layer 2 only."""
    run, _ = finished_run
    for model, key, layers, rank, n in [
        ("tiny-pythia", "fig03", (2, 3), 1, 4),
        ("tiny-pythia", "fig05", (3,), 1, 1),
        ("tiny-pythia", "fig04", (2, 3), 1, 1),
        ("tiny-pythia", "fig07", (2,), 1, 1),
        ("tiny-pythia", "fig15", (2,), 1, 1),
        ("tiny-pythia", "fig08-1", (2,), 1, 1),
        ("tiny-pythia", "fig08-2", (2,), 2, 1),
        ("tiny-gpt2", "fig08-0", (2, 3), 1, 1),
        ("tiny-gpt2", "fig16_18", (2, 3), 1, 2),
    ]:
        top = _top_de(run, model)
        values = {(layer, h): top[layer, h] for layer in layers for h in range(top.shape[1])}
        expected = _ranked(values, largest=True)[rank - 1 : rank - 1 + n]
        record = _record(run, model, key)
        assert [tuple(h) for h in record["heads"]] == expected, (key, values)
        got = [values[h] for h in expected]
        np.testing.assert_allclose(record["values"], got, rtol=1e-4, atol=1e-5)

    record = _record(run, "tiny-gpt2", "fig09")
    ds = xr.open_zarr(run / "results" / "tiny-gpt2" / "reinforcement" / "reinforcement.zarr")
    scale = float(ds.scale.max())
    slopes = {}
    for label in map(str, ds["head"].values):
        layer, head = (int(x) for x in label[1:].split("H"))
        if layer >= 2:
            x = ds.de_clean.sel(head=label).values.ravel().astype(np.float64)
            y = ds.de_new.sel(head=label, scale=scale).values.ravel().astype(np.float64)
            slopes[(layer, head)] = np.polyfit(x, y, 1)[0]
    assert len(slopes) == 8  # every second-half head is ranked
    best = _ranked(slopes, largest=False)[0]
    assert [tuple(h) for h in record["heads"]] == [best], slopes
    assert record["values"][0] == pytest.approx(slopes[best], abs=1e-4)
    assert f"(slope {slopes[best]:.2f} at s = {scale:g})" in record["description"]


@slow
def test_demo_rerun_has_nothing_to_do(finished_run):
    """Captions that read the pick records are evaluated when the jobs run, so a rerun finds
    the same params and nothing to do."""
    run, configs = finished_run
    proc = snakemake("-n", "--cores", "1", "--configfile", *configs, cwd=run, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert "Nothing to be done" in proc.stdout + proc.stderr


# Every kind of store the demo writes (a path pattern under results/ for each).
STORES = (
    "*/tokens.zarr",
    "*/clean/shard-*.zarr",
    "*/ablation/*/shard-*.zarr",
    "*/summary/*.zarr",
    "*/intervals/*.zarr",
    "*/neurons/selected.zarr",
    "*/neurons/reductions.zarr",
    "*/norms/*.zarr",
    "*/reinforcement/reinforcement.zarr",
    "*/attribution/*.zarr",
    "*/attribution/*/shard-*.zarr",
    "*/atp/*.zarr",
    "*/atp/*/shard-*.zarr",
    "*/tasks/*/prompts.zarr",
    "*/tasks/*/clean/shard-*.zarr",
    "*/tasks/*/ablation/*.zarr",
    "*/tasks/*/attribution/*.zarr",
    "*/tasks/*/summary/*.zarr",
    "*/tasks/*/intervals/*.zarr",
    "*/tasks/*/atp/*.zarr",
    "*/tasks/*/sets/*.zarr",
    "*/tasks/*/methods/*.zarr",
)


@slow
def test_every_store_records_the_full_provenance(finished_run):
    """Each store names the model entry, data and engine sections, seed, device, dtype, the
    weights' revision and the package versions, and no timing (reruns are byte-identical)."""
    run, _ = finished_run
    results = run / "results"
    stores = sorted(results.rglob("*.zarr"))
    for pattern in STORES:
        assert list(results.glob(pattern)), pattern
    assert set(stores) == {p for pattern in STORES for p in results.glob(pattern)}
    for path in stores:
        attrs = open_zarr(path).attrs  # open_zarr also checks every chunk file is there
        assert missing_provenance(attrs) == [], path
        model = path.relative_to(results).parts[0]
        assert attrs["model"] == attrs["model_entry"]["name"] == model, path
        if path.name == "prompts.zarr":  # made from the tokenizer alone, before training
            assert attrs["model_revision"] == TOKENIZER_ONLY, path
            assert attrs["tokenizer_revision"].startswith("sha256:"), path
        else:
            assert attrs["model_revision"].startswith("sha256:"), path  # a trained checkpoint
        assert "seconds" not in attrs, path
    tokens = {p.parent.name: open_zarr(p).attrs for p in results.glob("*/tokens.zarr")}
    for model, attrs in tokens.items():
        shard = open_zarr(next(results.glob(f"{model}/ablation/*/shard-000.zarr"))).attrs
        assert attrs["model_revision"] == shard["model_revision"]


@slow
def test_redrawn_figures_and_tables_are_the_same_bytes(finished_run):
    """Drawing every figure and table again from the same stores writes identical files (no
    creation date in PDFs, nothing timed), so two runs of a config give the same results/."""
    run, configs = finished_run
    outputs = sorted(
        p for name in ("figures", "tables") for p in (run / "results" / name).iterdir()
    )
    assert {p.name for p in outputs} >= {f"{stem}.pdf" for stem in FIGURES} | TABLES
    before = {p: p.read_bytes() for p in outputs}
    forced = [str(p.relative_to(run)) for p in outputs]
    proc = snakemake(
        "--cores", "2", "--configfile", *configs, "--forcerun", *forced, cwd=run, timeout=900
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert "rule head_table:" in proc.stdout + proc.stderr  # they were made again
    assert [p.name for p in outputs if p.read_bytes() != before[p]] == []


@slow
def test_a_deleted_store_is_made_again_with_everything_downstream(finished_run, tmp_path):
    """What a damaged store's message says to do: after deleting it, the next run remakes it
    and every output made from it, and nothing upstream."""
    run, configs = finished_run
    summary = run / "results" / "tiny-pythia" / "summary" / "resample.zarr"
    aside = tmp_path / "resample.zarr"
    summary.rename(aside)
    try:
        proc = snakemake(
            "--cores", "2", "--configfile", *configs, "--dry-run", cwd=run, timeout=600
        )
    finally:
        aside.rename(summary)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-4000:]
    jobs = set(re.findall(r"^rule (\w+):", out, flags=re.MULTILINE))
    assert {"summarize_heads", "head_table", "fig01"} <= jobs, jobs
    assert not jobs & {"ablate", "clean_cache", "train_model", "tokenize"}, jobs


# --- fast: the one figure list and the committed reduced demo ---------------------------------

WORKFLOW = ROOT / "workflow"
# The paper's figures the workflow reproduces (Figs 10, 12-14 and 20 show no measurement).
PAPER_FIGURES = {1, 2, 3, 4, 5, 6, 7, 8, 9, 11, 15, 16, 17, 18, 19, 21, 22, 23, 24}


def _figure_numbers(name: str) -> set[int]:
    match = re.match(r"fig(\d+)(?:-(\d+))?_", name)
    if match is None:
        return set()
    first, last = int(match[1]), int(match[2] or match[1])
    return set(range(first, last + 1))


def _figure_files(rule: str) -> dict[str, str]:
    """A figure rule's files as its text writes them: pdf, png, caption, log, benchmark."""
    text = rule_texts()[rule]
    find = {
        "pdf": r'"(results/figures/[^"]+\.pdf)"',
        "png": r'"(results/figures/[^"]+\.png)"',
        "caption": r'caption="\.\./report/([^"]+)\.rst"',
        "log": r'"results/logs/figures/([^"]+)\.log"',
        "benchmark": r'"results/benchmarks/figures/([^"]+)\.tsv"',
    }
    return {key: re.findall(pattern, text) for key, pattern in find.items()}


def test_the_figure_list_covers_the_paper_once_and_its_files_exist():
    """Every paper figure drawn by exactly one entry; each entry's rule is unique, its script,
    caption and stage function (named after the rule, in its kind's stage module) exist, and
    the figures beyond the paper are the frozen-LayerNorm, who-repairs-whom, attribution-patching
    and training ones."""
    names = {f.rule: Path(_figure_files(f.rule)["png"][0]).stem for f in FIGURE_LIST}
    numbers = [n for name in names.values() for n in _figure_numbers(name)]
    assert sorted(numbers) == sorted(PAPER_FIGURES)
    beyond = [name for name in names.values() if not _figure_numbers(name)]
    assert beyond == [
        "extra_frozen_ln",
        "repair_heatmap",
        "repair_top_repairers",
        "repair_tokens",
        "atp_vs_exact",
        "atp_error_vs_self_repair",
        "training_self_repair",
    ]
    assert len(names) == len(set(names.values())) == 21
    assert FIGURES == set(names.values())
    for figure in FIGURE_LIST:
        (caption,) = _figure_files(figure.rule)["caption"]
        assert (WORKFLOW / "report" / f"{caption}.rst").is_file(), figure
        script = WORKFLOW / "scripts" / rule_script(figure.rule)
        stages = STAGE_MODULES.get(figure.kind, stage_figures)
        assert f"{stages.__name__.split('.')[-1]}.{figure.rule}" in script.read_text(), figure
        assert callable(getattr(stages, figure.rule)), figure
        assert figure.rule in stages.__all__
        assert figure.kind in ("paper", "mechanism", "extra", "repair", "atp", "training")
    assert (WORKFLOW / "report" / "head_table.rst").is_file() and TABLES
    assert (WORKFLOW / "report" / "repair_graph.rst").is_file()
    assert (WORKFLOW / "report" / "atp_table.rst").is_file()


def test_the_figure_list_names_config_keys_and_stores_that_exist():
    """Each figure's target is a key of config/config.yaml, and each kind of store it reads is
    one a rule writes (results/{model}/<kind>/..., or results/{model}/{dataset}<kind>/... by a
    rule that serves every dataset)."""
    paper = load("config.yaml")
    rules = "".join(p.read_text() for p in (WORKFLOW / "rules").glob("*.smk"))
    for figure in FIGURE_LIST:
        node = paper
        for part in figure.target.split(".") if figure.target else []:
            assert isinstance(node, dict) and part in node, (figure.rule, figure.target)
            node = node[part]
        for kind in figure.reads:
            written = (f'"results/{{model}}/{where}{kind}/' for where in ("", "{dataset}"))
            assert any(w in rules for w in written), (figure.rule, kind)


def test_figure_rules_are_the_figure_list_and_name_their_own_files():
    """rules/figures.smk defines one rule per listed figure of the paper's kinds and nothing
    else (the who-repairs-whom, attribution-patching and training figures: their stages'
    rules files), and each rule writes one PDF and one PNG of the same stem, and its caption, log and benchmark under one
    tag of its own."""
    own_files = {"repair": "attribution.smk", "atp": "atp.smk", "training": "training.smk"}
    texts = rule_texts()
    in_figures = set(rule_texts_of("figures.smk"))
    assert in_figures == {f.rule for f in FIGURE_LIST if f.kind not in own_files}
    for kind, name in own_files.items():
        assert set(rule_texts_of(name)) >= {f.rule for f in FIGURE_LIST if f.kind == kind}
    tags = set()
    for figure in FIGURE_LIST:
        files = _figure_files(figure.rule)
        assert len(files["pdf"]) == len(files["png"]) == 1, figure.rule
        assert Path(files["pdf"][0]).stem == Path(files["png"][0]).stem, figure.rule
        assert files["caption"] == files["log"] == files["benchmark"], (figure.rule, files)
        tags.add(files["caption"][0])
    assert len(tags) == len(FIGURE_LIST)
    for name in ("common", "data", "clean", "ablation", "summaries", "mechanisms"):
        assert not {f.rule for f in FIGURE_LIST} & set(rule_texts_of(f"{name}.smk")), name
    assert set(texts) >= {f.rule for f in FIGURE_LIST}


def test_the_reduced_demo_is_the_demo_at_toy_size():
    """.test/config/config.yaml, the overlay of config/demo.yaml the slow tests above run,
    changes only sizes (tokens, bootstrap resamples, vocabulary, model width and training,
    prompts), so the demo's substitutes and every figure stay valid; `models`, a list that the
    merge replaces, is the demo's text models' entries with those sizes (not its tasks_only
    induction model: its task jobs and training are tested through snakemake -n,
    tests/test_tasks_only.py)."""
    demo, overlay = load("demo.yaml"), load_test("config.yaml")
    assert set(overlay) == {"data", "tokenizers", "models", "figures", "tasks"}
    assert set(overlay["data"]) <= {"n_tokens", "seq_len", "shard_rows"}
    assert overlay["figures"] == {"bootstrap": {"resamples": 200}}
    assert overlay["tokenizers"] == {name: {"vocab_size": 512} for name in demo["tokenizers"]}
    # keep_steps: the training checkpoints kept, within the shorter training
    sizes = {"d_model": 32, "steps": 400, "batch_size": 16, "lr": 0.02}
    sizes["keep_steps"] = [0, 50, 200]
    text = [entry for entry in demo["models"] if not entry.get("tasks_only")]
    assert len(text) == 2 and overlay["models"] == [
        {**entry, "train": {**entry["train"], **sizes}} for entry in text
    ]
    # the task: fewer and shorter prompts (the rows must fit the smaller models' context), on
    # the text models (the demo's task names its induction model, not in this run: CI's
    # plumbing of the task rules), and expected backups above a threshold the reduced models'
    # scores cross (they do not copy), so the method table ranks some
    assert set(overlay["tasks"]) <= set(demo["tasks"])
    sizes = {"n_prompts", "length", "models", "expected_backups"}
    assert all(set(task) <= sizes for task in overlay["tasks"].values())
    assert all(task["models"] == [e["name"] for e in text] for task in overlay["tasks"].values())
    assert all(set(task["expected_backups"]) == {"induction_score_above"}
               for task in overlay["tasks"].values())  # fmt: skip
    reduced = reduced_demo_config()
    assert set(reduced) == set(demo) and reduced["tasks"].keys() == demo["tasks"].keys()


# --- self-repair over training (the demo's training checkpoints) ------------------------------


@slow
def test_demo_checkpoints_learn_and_the_training_figure_is_drawn(finished_run):
    """Every checkpoint of the reduced demo (steps 0, 50, 200 and the model, 400) is
    measured on the same first shard: its mean loss there falls from checkpoint to checkpoint,
    starting near uniform guessing; its tokens are its model's; its weights are its own; and the
    training figure is drawn with a caption naming the checkpoints and tokens."""
    run, configs = finished_run
    results = run / "results"
    for model in ("tiny-gpt2", "tiny-pythia"):
        keys = [f"{model}@step{s}" for s in (0, 50, 200)] + [model]
        losses = [
            float(open_zarr(results / key / "clean" / "shard-000.zarr").loss.values.mean())
            for key in keys
        ]
        assert all(a > b for a, b in zip(losses, losses[1:], strict=False)), (model, losses)
        assert losses[0] > 0.9 * np.log(512) and losses[-1] < losses[0] - 1.0, (model, losses)
        tokens = open_zarr(results / model / "tokens.zarr").tokens.values
        revisions = set()
        for key in keys[:-1]:
            shared = open_zarr(results / key / "tokens.zarr")
            assert np.array_equal(shared.tokens.values, tokens), key
            attrs = open_zarr(results / key / "ablation" / "resample" / "shard-000.zarr").attrs
            assert attrs["checkpoint_of"] == model and f"@step{attrs['checkpoint_step']}" in key
            revisions.add(attrs["model_revision"])
            assert not (results / key / "ablation" / "resample" / "shard-001.zarr").exists()
            assert not (results / key / "ablation" / "mean").exists()  # figures.ablation only
        assert len(revisions) == len(keys) - 1  # each checkpoint its own weights
    for suffix in (".png", ".pdf"):
        assert (results / "figures" / f"training_self_repair{suffix}").stat().st_size > 1000
    report = run / "report-training.zip"
    proc = snakemake(
        "--cores", "1", "--configfile", *configs, "--report", str(report), cwd=run, timeout=600
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    with zipfile.ZipFile(report) as archive:
        html = next(n for n in archive.namelist() if n.endswith("report.html"))
        page = archive.read(html).decode()
    assert "tiny-gpt2 at steps 0, 50, 200, 400 (the last: tiny-gpt2 itself)" in page
    assert "Every checkpoint on the same 992 tokens" in page
