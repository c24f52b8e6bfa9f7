"""AtP under several ablation kinds from one job (engine.atp.measure_atp_kinds): each kind's
Dataset is, bitwise, the one its own single-kind run gives (measure_atp), on tiny random GPT-2,
Pythia and Llama models, on running text (a resample batch runs its partner rows, mean and zero
do not) and on a task (corrupted runs the corrupted prompts, mean, zero-with-value-bias and
template-mean do not); the grouping of kinds into shared passes; the kinds' errors; and the
workflow's jobs (rules/atp.smk): one per shard, or per task, for every kind."""

from __future__ import annotations

import dataclasses
import re

import numpy as np
import pytest
import torch
import yaml
from helpers import REDUCED_DEMO_CONFIGS, ROOT, snakemake
from tasks_helpers import padded_task

from selfrepair.engine.ablation import resample_source, with_partners
from selfrepair.engine.atp import measure_atp, measure_atp_kinds
from selfrepair.engine.atp_passes import pass_groups, run_rows_of

pytestmark = pytest.mark.usefixtures("one_torch_thread")

TEXT_KINDS = ["resample", "mean", "zero", "zero-with-value-bias"]
TASK_KINDS = ["corrupted", "mean", "template-mean", "zero-with-value-bias"]


def random_mask(model, n_rows: int, n_pos: int, p: float, seed: int) -> np.ndarray:
    shape = (model.cfg.n_layers, model.cfg.n_heads, n_rows, n_pos)
    return np.random.default_rng(seed).random(shape) < p


def assert_bitwise(got, want) -> None:
    """Same variables, coordinates and attributes, every value the same bits (NaN included)."""
    assert set(got.variables) == set(want.variables)
    assert got.attrs == want.attrs
    for name in want.variables:
        a, b = got[name].values, want[name].values
        assert a.dtype == b.dtype and a.shape == b.shape, name
        assert a.tobytes() == b.tobytes(), name


@pytest.mark.parametrize("shared", [True, False])
def test_every_kind_of_one_text_job_is_its_own_job_bitwise(tiny_model, tiny_tokens, shared):
    """Rows, GradDrop, the heads' top tokens (with GradDrop) and per-token estimates, in batches
    of 4 of 6 rows (both resample batches run a partner row the others do not), are the
    single-kind numbers, bit for bit, whether the kinds share one graph or run by group."""
    n_rows, n_pos = tiny_tokens.shape[0], tiny_tokens.shape[1] - 1
    top = random_mask(tiny_model, n_rows, n_pos, 0.2, seed=0)
    per_token = random_mask(tiny_model, n_rows, n_pos, 0.1, seed=1)
    options = dict(top=top, per_token=per_token, batch_size=4)
    got = measure_atp_kinds(tiny_model, tiny_tokens, TEXT_KINDS, shared=shared, **options)
    assert list(got) == TEXT_KINDS
    for kind in TEXT_KINDS:
        want = measure_atp(tiny_model, tiny_tokens, kind, **options)
        assert np.abs(want.atp_row.values).max() > 0  # real estimates, not zeros
        assert_bitwise(got[kind], want)
    assert not np.array_equal(got["resample"].atp_row.values, got["mean"].atp_row.values)


def test_a_task_job_under_corrupted_and_mean_is_their_own_jobs_bitwise(tiny_model):
    """On padded prompts with corrupted partners (a separate pool), answers scored and per-answer
    estimates, in batches of 2 of 5 rows: each kind's numbers are its single-kind run's."""
    tokens, task = padded_task(tiny_model, seed=3)
    task = dataclasses.replace(task, groups=torch.arange(tokens.shape[0]) % 2)
    scored = task.real[:, 1:].numpy() & (np.arange(tokens.shape[1] - 1) % 3 == 1)
    cfg = tiny_model.cfg
    per_token = np.broadcast_to(scored, (cfg.n_layers, cfg.n_heads, *scored.shape))
    options = dict(per_token=per_token, scored=scored, task=task, batch_size=2)
    got = measure_atp_kinds(tiny_model, tokens, TASK_KINDS, **options)
    for kind in TASK_KINDS:
        assert_bitwise(got[kind], measure_atp(tiny_model, tokens, kind, **options))
    assert not np.array_equal(got["corrupted"].atp_row.values, got["mean"].atp_row.values)


def test_kinds_share_passes_by_the_rows_they_run():
    """shared: one group; otherwise kinds taking z from the same pool of rows share; a batch
    runs the union of its kinds' partner rows, and one kind's exactly as with_partners does."""
    kinds = ["resample", "mean", "corrupted", "zero", "template-mean"]
    assert pass_groups(kinds) == [kinds]
    assert pass_groups(kinds, shared=False) == [
        ["resample"],
        ["mean", "zero", "template-mean"],
        ["corrupted"],
    ]
    rows = torch.arange(4, 8)
    source = resample_source(12)
    corrupted = torch.arange(12) + 12
    assert torch.equal(run_rows_of(rows, [source]), with_partners(rows, source))
    assert run_rows_of(rows, [source, corrupted]).tolist() == [4, 5, 6, 7, 8, 16, 17, 18, 19]
    assert torch.equal(run_rows_of(rows, []), rows)


@pytest.mark.parametrize("ablations", [[], ["mean", "mean"], "mean"])
def test_the_kinds_are_a_list_of_distinct_names(tiny_model, tiny_tokens, ablations):
    with pytest.raises(ValueError, match="ablations must be a list of distinct kinds"):
        measure_atp_kinds(tiny_model, tiny_tokens, ablations)


# --- through the workflow: one job per shard (per task) writes every kind's store --------------


def _dry_run(tmp_path, extra: dict | None = None) -> str:
    """The reduced demo's dry run (with `extra` as a last config file), every job listed."""
    configs = list(REDUCED_DEMO_CONFIGS)
    if extra is not None:
        (tmp_path / "extra.yaml").write_text(yaml.safe_dump(extra))
        configs.append(str(tmp_path / "extra.yaml"))
    proc = snakemake("-n", "--forceall", "--cores", "1", "--configfile", *configs, cwd=ROOT,
                     timeout=600)  # fmt: skip
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-3000:]
    return proc.stdout


def _jobs(output: str, rule: str) -> list[list[str]]:
    """The outputs of each planned job of `rule`."""
    blocks = re.split(r"\n(?=\[[^\]]*\]\n(?:local)?rule )", output)
    heads = [b for b in blocks if re.search(rf"^(?:local)?rule {rule}:", b, re.M)]
    return [re.search(r"^\s+output: (.+)$", b, re.M).group(1).split(", ") for b in heads]


def test_one_atp_job_per_shard_and_task_writes_every_kind(tmp_path):
    """The reduced demo plans one atp job per (model, shard), writing the store of each of the
    config's ablations at its path, and one task_atp job per (model, task); a task whose
    ablations are not the common list gets one task_atp_per_kind job per kind."""
    atp = _jobs(_dry_run(tmp_path), "atp")
    assert len(atp) == 4  # 2 models x 2 shards, not x 3 ablations
    for outputs in atp:
        model, shard = re.fullmatch(
            r"results/(.+)/atp/resample/(shard-\d+\.zarr)", outputs[0]
        ).groups()
        assert outputs == [f"results/{model}/atp/{a}/{shard}" for a in ("resample", "mean", "zero")]
    extra = {"tasks": {"other": {"type": "induction", "n_prompts": 8, "length": 12,
                                 "ablations": ["zero-with-value-bias", "mean"]}}}  # fmt: skip
    output = _dry_run(tmp_path, extra)
    shared = sorted(o for job in _jobs(output, "task_atp") for o in job)
    assert shared == [
        f"results/{m}/tasks/induction/atp/{a}.zarr"
        for m in ("tiny-gpt2", "tiny-pythia")
        for a in ("corrupted", "mean")
    ]
    alone = sorted(o for job in _jobs(output, "task_atp_per_kind") for o in job)
    assert alone == [
        f"results/{m}/tasks/other/atp/{a}.zarr"
        for m in ("tiny-gpt2", "tiny-pythia")
        for a in ("mean", "zero-with-value-bias")
    ]
