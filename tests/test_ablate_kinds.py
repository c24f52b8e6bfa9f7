"""One ablate job for every ablation variant of a text shard (stages.ablation.ablate with a list
of kinds; rules/ablation.smk): each kind's stores (heads, kept per token or not, and who repairs
whom) are, file for file and byte for byte, the ones a job of that kind alone writes, on tiny
random GPT-2, Pythia and Llama models; the per-kind arguments' errors; and the workflow's jobs:
one ablate job per (model, shard) writing every variant, a training checkpoint's one kind."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
import xarray as xr
from helpers import REDUCED_DEMO_CONFIGS, ROOT, snakemake

from selfrepair.models.builders import random_model
from selfrepair.models.processed import write_processed
from selfrepair.stages.ablation import ablate, ablation_kinds
from selfrepair.stages.clean import clean_cache
from selfrepair.stages.job import ModelJob, weights_source
from selfrepair.stages.repair import head_top_tokens
from selfrepair.stages.store import write_zarr

pytestmark = pytest.mark.usefixtures("one_torch_thread")

N_ROWS, N_CTX = 8, 16
# the reduced demo's variants: (ablation, freeze_ln), the frozen one last
KINDS = [("resample", False), ("mean", False), ("zero", False), ("resample", True)]
KEEP = {"n_tokens": N_ROWS * (N_CTX - 1), "n_resamples": 10, "seed": 0, "heads": [[1, 0]]}
KEEP |= {"k": 3, "context": 4}


def tree_bytes(folder: Path) -> dict[str, bytes]:
    """Every file under a store folder, by its path inside it."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


@pytest.fixture(scope="module", params=["gpt2", "pythia", "llama"])
def shard(request, tmp_path_factory) -> dict:
    """A model's processed weights, a shard of token rows and its head_top_tokens store."""
    root = tmp_path_factory.mktemp(f"kinds-{request.param}")
    entry = {"name": "tiny"}
    write_processed(random_model(request.param), root / "w", weights_source(entry, None))
    rows = np.random.default_rng(0).integers(1, 97, (N_ROWS, N_CTX), dtype=np.int32)
    rows[:, 0] = 0  # BOS
    tokens = root / "tokens.zarr"
    write_zarr(xr.Dataset({"tokens": (("row", "tok"), rows)}), tokens, chunks={"row": 4})
    job = ModelJob(tokens=str(tokens), entry=entry, batch_size=3, shards=(0, N_ROWS),
                   weights=str(root / "w"))  # fmt: skip
    clean_cache(job, out=str(root / "clean.zarr"), attrs={"seed": 0})
    top = str(root / "top.zarr")
    head_top_tokens(shards=[str(root / "clean.zarr")], top_fraction=0.25, out=top, attrs={})
    return {"root": root, "job": job, "top": top}


def run(shard: dict, folder: str, kinds: list, keep: list) -> dict[str, list[str]]:
    """ablate over `kinds` in one call (a list) or one call per kind: its stores' paths."""
    root = shard["root"] / folder
    names = [f"{a}{'-frozen-ln' if frozen else ''}" for a, frozen in kinds]
    paths = {
        "heads": [str(root / "ablation" / n / "shard-000.zarr") for n in names],
        "attribution": [str(root / "attribution" / n / "shard-000.zarr") for n in names],
    }
    common = dict(heads_per_pass=3, mean_include_bos=True, top_tokens=shard["top"])
    common |= dict(attrs={"seed": 0, "shard": "000"})
    if folder.startswith("shared"):
        got = ablate(
            shard["job"],
            ablation=[a for a, _ in kinds],
            freeze_ln=[f for _, f in kinds],
            out=paths["heads"],
            attribution_out=paths["attribution"],
            keep=keep,
            **common,
        )
        assert isinstance(got, list) and len(got) == len(kinds)
    else:
        for i, (a, frozen) in enumerate(kinds):
            one = ablate(shard["job"], ablation=a, freeze_ln=frozen, out=paths["heads"][i],
                         attribution_out=paths["attribution"][i], keep=keep[i], **common)  # fmt: skip
            assert isinstance(one, xr.Dataset)
    return paths


@pytest.mark.parametrize("keep", [[None] * 4, [KEEP, KEEP, None, None]], ids=["all", "top"])
def test_every_kind_of_one_job_writes_its_own_jobs_stores_bitwise(shard, keep):
    """The heads and attribution stores of each kind, every token or kept per token (top, with
    a kept head), are the one-kind jobs' files byte for byte (provenance included: the same
    process); the kinds differ from each other."""
    shared = run(shard, f"shared-{keep[0] is None}", KINDS, keep)
    alone = run(shard, f"alone-{keep[0] is None}", KINDS, keep)
    for name in ("heads", "attribution"):
        trees = []
        for got, want in zip(shared[name], alone[name], strict=True):
            got_files, want_files = tree_bytes(Path(got)), tree_bytes(Path(want))
            assert got_files.keys() == want_files.keys(), got
            assert got_files == want_files, [k for k in got_files if got_files[k] != want_files[k]]
            trees.append(got_files)
        assert len({tuple(sorted(t.items())) for t in trees}) == len(KINDS), name


def test_the_kinds_arguments_are_one_per_kind_or_one_for_all():
    one = ablation_kinds("mean", "a.zarr", freeze_ln=False, keep=None)
    assert one == [{"ablation": "mean", "out": "a.zarr", "freeze_ln": False, "keep": None}]
    two = ablation_kinds(["mean", "zero"], ["a", "b"], freeze_ln=[False, True], keep=None)
    assert two == [
        {"ablation": "mean", "out": "a", "freeze_ln": False, "keep": None},
        {"ablation": "zero", "out": "b", "freeze_ln": True, "keep": None},
    ]
    with pytest.raises(ValueError, match=r"2 kinds \['mean', 'zero'\] but 1 values of out"):
        ablation_kinds(["mean", "zero"], ["a"])
    with pytest.raises(ValueError, match="but 3 values of freeze_ln"):
        ablation_kinds(["mean", "zero"], ["a", "b"], freeze_ln=[False] * 3)
    with pytest.raises(ValueError, match="but one store to write"):
        ablation_kinds(["mean", "zero"], "a")


def test_one_ablate_job_per_shard_writes_every_variant_and_a_checkpoint_one(tmp_path):
    """The reduced demo's dry run: per text model and shard one ablate job with every variant's
    heads and attribution stores, its runtime the variants' times one kind's; per training
    checkpoint shard one checkpoint_ablate job of figures.ablation."""
    proc = snakemake(
        "-n", "--forceall", "--configfile", *REDUCED_DEMO_CONFIGS, cwd=ROOT, timeout=300
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    jobs = re.split(r"\n(?=\[[^\]]*\]\n(?:local)?rule )", proc.stdout)
    ablate_jobs = [j for j in jobs if re.search(r"^(?:local)?rule ablate:", j, re.M)]
    variants = ["resample", "mean", "zero", "resample-frozen-ln"]
    planned = sorted(re.search(r"wildcards: (.*)", j).group(1) for j in ablate_jobs)
    assert planned == [f"model={m}, shard={s}" for m in ("tiny-gpt2", "tiny-pythia")
                       for s in ("000", "001")]  # fmt: skip
    for job in ablate_jobs:
        model, shard = re.search(r"wildcards: model=(\S+), shard=(\d+)", job).groups()
        outputs = re.search(r"output: (.*)", job).group(1).split(", ")
        want = [f"results/{model}/{kind}/{v}/shard-{shard}.zarr"
                for kind in ("ablation", "attribution") for v in variants]  # fmt: skip
        assert sorted(outputs) == sorted(want)
        assert re.search(r"runtime=80\b", job), job  # demo.yaml's 20 minutes x 4 variants
    checkpoint = [j for j in jobs if re.search(r"^(?:local)?rule checkpoint_ablate:", j, re.M)]
    assert len(checkpoint) == 6 and all("ablation=resample, shard=000" in j for j in checkpoint)
    assert all(re.search(r"runtime=20\b", j) for j in checkpoint)
