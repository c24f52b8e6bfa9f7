"""Attribution patching on a task (engine.atp with engine.inputs.TaskInputs) against autograd on
Hugging Face `transformers`' own forward pass: the logit difference against counterfactual
tokens summed over the answer positions only, z' from each row's corrupted prompt (run by
Hugging Face itself) or the mean over the real positions of right-padded rows; and the atp
rules planned on every task of a run (rules/atp.smk's `use rule ... as task_*`)."""

from __future__ import annotations

import re

import numpy as np
import pytest
import torch
import yaml
from helpers import REDUCED_DEMO_CONFIGS, ROOT, snakemake
from test_architectures import hf_checkpoint

from selfrepair.engine.atp import measure_atp
from selfrepair.engine.inputs import TaskInputs
from selfrepair.models.loading import load_local_checkpoint
from selfrepair.reference.atp import TaskRows, hf_reference_atp

pytestmark = pytest.mark.usefixtures("one_torch_thread")

TOL = 1e-4  # logits, as tests/test_atp.py


@pytest.fixture(scope="module", params=["gpt2", "gpt_neox", "llama_gqa"])
def hf_task(request, tmp_path_factory):
    """(Hugging Face model, the same checkpoint loaded by the project, tokens, TaskRows): rows
    right-padded to 12 tokens (lengths 12, 9, 10), counterfactuals, corrupted prompts and 2 to
    4 answer positions per row among those that predict a real token."""
    hf_model, path = hf_checkpoint(request.param, tmp_path_factory)
    gen = torch.Generator().manual_seed(1)
    tokens = torch.randint(0, 64, (3, 12), generator=gen)
    real = torch.arange(12)[None, :] < torch.tensor([12, 9, 10])[:, None]
    scored = torch.zeros(3, 11, dtype=torch.bool)
    scored[0, [3, 7, 10]] = scored[1, [5, 7]] = scored[2, [2, 4, 6, 8]] = True
    assert not (scored & ~real[:, 1:]).any()
    rows = TaskRows(
        counter=torch.randint(0, 64, (3, 11), generator=gen),
        corrupted=torch.randint(0, 64, (3, 12), generator=gen),
        real=real,
        scored=scored,
    )
    return hf_model, load_local_checkpoint(str(path)), tokens, rows


@pytest.mark.parametrize(
    ("ablation", "metric"),
    [
        ("corrupted", "logit_diff"),
        ("mean", "logit_diff"),
        ("mean", "correct_logit"),
        ("template-mean", "logit_diff"),
        ("zero-with-value-bias", "logit_diff"),
    ],
)
def test_task_atp_equals_autograd_on_hugging_face(hf_task, ablation, metric):
    """Row and per-answer AtP of every head, and GradDrop for every dropped layer, in batches
    of 2 (a batch's corrupted partners run with it), against autograd on transformers' own
    forward pass with the task's metric and z'."""
    hf_model, model, tokens, rows = hf_task
    counter = rows.counter if metric == "logit_diff" else None
    groups = torch.arange(tokens.shape[0]) % 2  # two template groups (template-mean)
    rows = TaskRows(counter, rows.corrupted, rows.real, rows.scored, groups)
    scored = rows.scored.numpy()
    cfg = model.cfg
    per_token = np.broadcast_to(scored, (cfg.n_layers, cfg.n_heads, *scored.shape))
    task = TaskInputs(counter, rows.corrupted, rows.real, groups)
    got = measure_atp(
        model, tokens, ablation, per_token=per_token, task=task, scored=scored, batch_size=2
    )
    ref = hf_reference_atp(hf_model, tokens, ablation, per_token=scored, task=rows)
    assert np.abs(ref["row"]).max() > 0.3  # estimates of whole logits, not of noise
    np.testing.assert_allclose(got.atp_row.values, ref["row"], atol=TOL, rtol=0)
    np.testing.assert_allclose(got.atp_token.values, ref["token"][per_token], atol=TOL, rtol=0)
    assert np.array_equal(got.n_scored.values, scored.sum(1))
    for layer in range(cfg.n_layers):
        dropped = hf_reference_atp(hf_model, tokens, ablation, drop_layer=layer, task=rows)
        np.testing.assert_allclose(got.graddrop_row.values[layer], dropped["row"], atol=TOL, rtol=0)


def test_the_task_metric_is_the_answers_only_and_corrupted_needs_its_prompts(hf_task):
    """Rows are the sum of their answers' per-token estimates, not of every position; corrupted
    ablation without corrupted prompts, or answers of the wrong shape, fail naming the fix."""
    _, model, tokens, rows = hf_task
    scored = rows.scored.numpy()
    cfg = model.cfg
    per_token = np.broadcast_to(scored, (cfg.n_layers, cfg.n_heads, *scored.shape))
    task = TaskInputs(rows.counter, rows.corrupted, rows.real)
    got = measure_atp(model, tokens, "corrupted", per_token=per_token, task=task, scored=scored)
    per_row = np.zeros(got.atp_row.shape)
    np.add.at(
        per_row,
        (got.entry_layer.values, got.entry_head.values, got.entry_batch.values),
        got.atp_token.values,
    )
    np.testing.assert_allclose(per_row, got.atp_row.values, atol=1e-5, rtol=0)
    every = measure_atp(model, tokens, "corrupted", task=task, graddrop=False)
    assert not np.allclose(every.atp_row.values, got.atp_row.values)
    with pytest.raises(
        ValueError, match="without a task's corrupted prompts: pass task=TaskInputs"
    ):
        measure_atp(model, tokens, "corrupted")
    with pytest.raises(ValueError, match="scored must be"):
        measure_atp(model, tokens, "zero", scored=scored[:, 1:])


# --- through the workflow: the same rules planned on every task ------------------------------


def _planned(tmp_path, configs, extra=None, target="all") -> dict[str, int]:
    """Jobs per rule of a dry run of `target` with these config files (and `extra` after)."""
    configs = list(configs)
    if extra is not None:
        (tmp_path / "extra.yaml").write_text(yaml.safe_dump(extra))
        configs.append(str(tmp_path / "extra.yaml"))
    proc = snakemake(
        "-n", "--cores", "1", target, "--configfile", *configs, "--quiet", "rules",
        cwd=ROOT, timeout=600,
    )  # fmt: skip
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-3000:]
    return {r: int(n) for r, n in re.findall(r"^(\w+)\s+(\d+)$", proc.stdout + proc.stderr, re.M)}


TASK_ATP_RULES = ("task_atp", "task_atp_summary", "task_atp_table", "task_atp_scatter")


@pytest.mark.parametrize(
    ("configs", "per_rule"),
    [
        # 2 models x induction's 2 ablations (corrupted, mean): one AtP job per model for both,
        # a summary per ablation; a table and 2 figures per model
        (REDUCED_DEMO_CONFIGS, (2, 4, 2, 2)),
        # gpt2-small x IOI under corrupted ablation
        (("config/ioi.yaml", ".test/config/ioi.yaml"), (1, 1, 1, 1)),
    ],
    ids=["reduced-demo", "ioi-ci"],
)
def test_the_atp_rules_run_on_every_task_of_a_run(tmp_path, configs, per_rule):
    """`all` and the named target `tasks` plan a task's AtP store and summary per ablation, its
    table and figures; engine.atp: false plans none."""
    for target in ("all", "tasks"):
        counts = _planned(tmp_path, configs, target=target)
        assert tuple(counts.get(r, 0) for r in TASK_ATP_RULES) == per_rule, counts
        assert counts.get("task_atp_error", 0) == per_rule[-1]
    off = _planned(tmp_path, configs, {"engine": {"atp": False}})
    assert not any(rule.startswith("task_atp") for rule in off), off


def test_demo_task_atp_stores_are_the_engine_on_the_prompts(finished_run):
    """(slow) Each demo model's induction AtP store under corrupted ablation is measure_atp on
    the task's prompts, corrupted partners and answers; its per-answer estimates sit on the
    task's token axis, in the order of the task's exact stores; each summary's exact means are
    the task summary's; the table and the figures exist."""
    import pandas as pd

    from selfrepair.analysis import atp as judge
    from selfrepair.stages.store import open_zarr
    from selfrepair.stages.tasks import read_prompts, task_inputs

    run, _ = finished_run
    task = "induction"
    for name in ("tiny-gpt2", "tiny-pythia"):
        folder = run / "results" / name / "tasks" / task
        model = load_local_checkpoint(str(run / "resources" / "models" / name))
        prompts = read_prompts(str(folder / "prompts.zarr"))
        exact = open_zarr(folder / "ablation" / "corrupted.zarr")
        stored = open_zarr(folder / "atp" / "corrupted.zarr").load()
        assert np.array_equal(stored.prompt.values, exact.prompt.values)
        assert np.array_equal(stored.position.values, exact.position.values)
        scored, cfg = prompts.scored, model.cfg
        fresh = measure_atp(
            model,
            torch.from_numpy(prompts.tokens.astype(np.int64)),
            "corrupted",
            per_token=np.broadcast_to(scored, (cfg.n_layers, cfg.n_heads, *scored.shape)),
            scored=scored,
            task=task_inputs(prompts, stored.attrs["metric"]),
        )
        fresh = judge.graddrop_stored(judge.task_units(fresh, np.ones((4, 4), bool), True))
        for var in ("atp_row", "atp_top", "atp_token", "graddrop_row_combined", "metric_clean"):
            np.testing.assert_allclose(stored[var], fresh[var], atol=1e-4)
        np.testing.assert_allclose(stored.atp_top, stored.atp_row)
        for ablation in ("corrupted", "mean"):
            summary = open_zarr(folder / "atp" / f"summary-{ablation}.zarr").load()
            heads = open_zarr(folder / "summary" / f"{ablation}.zarr")
            np.testing.assert_allclose(summary.all_exact, heads.mean_logit_diff, atol=1e-5)
            assert np.isfinite(float(summary.all_spearman_atp))
        table = pd.read_csv(folder / "tables" / "task_atp_table.csv")
        assert set(table.ablation) == {"corrupted", "mean"} and set(table.model) == {name}
        for stem in ("task_atp_scatter", "task_atp_error"):
            assert (folder / "figures" / f"{stem}.png").stat().st_size > 1000
