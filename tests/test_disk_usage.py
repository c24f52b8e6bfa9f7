"""What the planned jobs take on disk (selfrepair.config.disk, storage): a store write_zarr
writes takes no more than its bound; the reduced demo's whole estimate (results/, resources/,
logs) is not below what a finished run takes on disk, nor far above; every store of that run has
no more arrays than disk.STORE_ARRAYS allows; and a disk that fills up inside a job is one line
naming the folder, the bytes and the fix (stages.joblog.logged)."""

from __future__ import annotations

import errno
import os
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import xarray as xr
from helpers import link_project, load, merged
from helpers import reduced_demo_config as demo_config

import selfrepair.config as sr_config
from selfrepair.config import disk
from selfrepair.config.storage import named_paths
from selfrepair.config.storage_check import human, part_totals
from selfrepair.stages.joblog import NoSpaceLeft, logged


def on_disk(path: Path) -> tuple[int, int, int]:
    """(bytes on disk: every file's and folder's blocks, files, apparent bytes) under path,
    links not followed, as `du --block-size=1` counts them."""
    used, files, apparent = os.lstat(path).st_blocks * 512, 0, 0
    for folder, _, names in os.walk(path):
        if Path(folder) != path:
            used += os.lstat(folder).st_blocks * 512
        for name in names:
            st = os.lstat(os.path.join(folder, name))
            used, files, apparent = used + st.st_blocks * 512, files + 1, apparent + st.st_size
    return used, files, apparent


# --- one store, as write_zarr writes it ---------------------------------------------------------


def test_a_store_takes_no_more_than_its_bound_and_files_dominate_small_stores(tmp_path):
    from selfrepair.stages.store import write_zarr

    rng = np.random.default_rng(0)  # random bytes: Blosc cannot shrink them
    layers, heads, tokens = 4, 4, 20_000
    ds = xr.Dataset(
        {
            "de": (("layer", "head", "token"), rng.random((layers, heads, tokens), "float32")),
            "loss": (("row",), rng.random(300_000, "float32")),  # Zarr guesses several chunks
            "count": (("layer", "head"), rng.integers(0, 9, (layers, heads))),
        },
        coords={"layer": np.arange(layers), "head": np.arange(heads)},
    )
    store = tmp_path / "results" / "m" / "ablation" / "mean" / "shard-000.zarr"
    write_zarr(ds, store, chunks={"layer": 1})
    (store / ".snakemake_timestamp").touch()  # as Snakemake marks a directory output
    used, files, _ = on_disk(store)
    arrays = sum(1 for p in store.iterdir() if p.is_dir())
    assert arrays == 5
    block = disk.block_size(tmp_path)
    data = sum(v.nbytes for v in ds.variables.values())
    bound = disk.store_disk_bytes(data, arrays, layers, block)
    assert used <= bound < 1.5 * used, (used, bound)
    # the same arrays, tiny: the files' blocks are all there is to it
    small = ds.isel(token=slice(0, 10), row=slice(0, 10))
    write_zarr(small, store.with_name("shard-001.zarr"), chunks={"layer": 1})
    used, files, apparent = on_disk(store.with_name("shard-001.zarr"))
    assert apparent < used / 4 and files >= 4 + 2 * arrays
    small_data = sum(v.nbytes for v in small.variables.values())
    assert used <= disk.store_disk_bytes(small_data, arrays, layers, block) < 2 * used


def test_block_size_is_the_disks_allocation_unit(tmp_path):
    stat = os.statvfs(tmp_path)
    assert disk.block_size(tmp_path) == (stat.f_frsize or stat.f_bsize)
    assert disk.on_disk(0) == 0 and disk.on_disk(1) == 4096 and disk.on_disk(4097) == 8192
    assert disk.on_disk(1, 512) == 512


# --- a full disk inside a job --------------------------------------------------------------------


def reduced_demo_config() -> dict:
    config = merged(load("config.yaml"), demo_config())  # as Snakemake merges the files
    sr_config.validate_run(config)
    return config


def full_disk(*args, **kwargs):
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def test_a_full_disk_in_a_store_writer_is_one_line_naming_folder_bytes_and_fix(
    tmp_path, monkeypatch
):
    from selfrepair.stages.store import write_zarr

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(xr.Dataset, "to_zarr", full_disk)
    out = "results/tiny-gpt2/clean/shard-000.zarr"
    job = SimpleNamespace(
        rule="clean_cache",
        wildcards={"model": "tiny-gpt2", "shard": "000"},
        output={"clean": out},
        config=reduced_demo_config(),
    )
    log = tmp_path / "results" / "logs" / "clean_cache" / "tiny-gpt2" / "shard-000.log"
    with pytest.raises(NoSpaceLeft) as info, logged(str(log), job):
        write_zarr(xr.Dataset({"x": ("token", np.zeros(3))}), out)
    message = str(info.value)
    assert "\n" not in message, message
    folder = tmp_path / "results" / "tiny-gpt2" / "clean"
    assert message.startswith(f"no space left on device writing {folder} (clean_cache job): ")
    need = sr_config.storage.output_bytes(
        job.config, sr_config.model_entries(job.config), "clean_cache", job.wildcards, job.output
    )
    assert need and f"its outputs take up to {human(need)} ({need:,} bytes) on disk" in message
    assert "bytes) is free there; free space on that disk, or run the workflow in a folder" in (
        message
    )
    assert "snakemake --directory DIR" in message
    assert info.value.__cause__ is None and info.value.__suppress_context__
    # the log keeps the original error with its traceback
    assert "No space left on device" in log.read_text()


def test_a_full_disk_in_a_figure_names_its_folder_without_a_config(tmp_path, monkeypatch):
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    monkeypatch.setattr(Figure, "savefig", full_disk)
    pdf = tmp_path / "results" / "figures" / "fig01.pdf"
    job = SimpleNamespace(
        rule="fig01", wildcards={}, output=[str(pdf), str(pdf.with_suffix(".png"))]
    )
    with pytest.raises(NoSpaceLeft) as info, logged(None, job):
        Figure().savefig(pdf)
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith(f"no space left on device writing {pdf.parent} (fig01 job): ")
    assert "it needs more on disk" in message and "free space on that disk" in message


def test_other_errors_pass_through_logged_unchanged(tmp_path):
    with pytest.raises(PermissionError), logged(str(tmp_path / "job.log")):
        raise PermissionError(errno.EACCES, "Permission denied")
    with pytest.raises(OSError) as info, logged(None):
        raise OSError(errno.EIO, "Input/output error")
    assert info.value.errno == errno.EIO


# --- the reduced demo: estimate against a finished run -------------------------------------------


def planned_jobs(workdir: Path, configs: tuple[str, ...]) -> tuple[dict, list]:
    """(config, jobs) a run of the workflow with these config files in an empty workdir would plan:
    Snakemake's DAG, as the Snakefile's onstart sees it (workflow.dag.needrun_jobs()).
    Snakemake's API has no public call for the planned jobs; the internals used here are those
    its dry run uses."""
    from snakemake.api import SnakemakeApi
    from snakemake.settings import types as st

    with SnakemakeApi(st.OutputSettings()) as api:
        workflow_api = api.workflow(
            resource_settings=st.ResourceSettings(cores=1),
            config_settings=st.ConfigSettings(configfiles=[workdir / c for c in configs]),
            storage_settings=st.StorageSettings(),
            workflow_settings=st.WorkflowSettings(),
            deployment_settings=st.DeploymentSettings(),
            snakefile=workdir / "workflow" / "Snakefile",
            workdir=workdir,
        )
        workflow = workflow_api.dag(dag_settings=st.DAGSettings()).workflow_api._workflow
        workflow._prepare_dag(
            forceall=False, ignore_incomplete=False, lock_warn_only=True, nolock=True
        )
        workflow._build_dag()
        return workflow.config, list(workflow.dag.needrun_jobs())


def measured_parts(run: Path) -> dict[str, tuple[int, int, int]]:
    """On disk, files and apparent bytes of what a run wrote: results/ (its logs and
    benchmarks apart), resources/, logs (results/logs, results/benchmarks and Snakemake's
    records and logs in .snakemake/)."""

    def added(*parts: tuple[int, int, int], sign: int = 1) -> tuple[int, int, int]:
        return tuple(parts[0][i] + sign * sum(p[i] for p in parts[1:]) for i in range(3))

    in_results = [on_disk(run / "results" / name) for name in ("logs", "benchmarks")]
    records = [on_disk(run / ".snakemake" / name) for name in ("metadata", "log")]
    return {
        "results": added(on_disk(run / "results"), *in_results, sign=-1),
        "resources": on_disk(run / "resources"),
        "logs": added(*in_results, *records),
    }


@pytest.mark.slow
def test_the_demo_estimate_is_not_below_what_a_finished_run_takes_on_disk(
    finished_run, tmp_path, capsys
):
    run, configs = finished_run
    (tmp_path / "plan").mkdir()
    plan = link_project(tmp_path / "plan")  # the run's config, planned from nothing
    config, jobs = planned_jobs(plan, configs)
    assert len(jobs) > 100 and not (plan / "results").exists()
    block = disk.block_size(run)
    estimate = sr_config.estimate_storage(config, sr_config.model_entries(config), jobs, block)
    parts = part_totals(estimate)
    measured = measured_parts(run)
    report = {p: (parts[p], *measured[p]) for p in parts}
    total = sum(parts.values())
    used = sum(m[0] for m in measured.values())
    with capsys.disabled():
        print(f"\nestimate vs on disk (files, apparent) in {block}-byte blocks: {report}")
        print(f"total: estimate {total:,} on disk {used:,} ratio {total / used:.2f}")
    for part, size in parts.items():
        assert size >= measured[part][0], (part, size, measured[part])
    assert used <= total <= 3 * used, (total, used)


@pytest.mark.slow
def test_every_demo_store_has_no_more_arrays_than_the_estimate_allows(finished_run, tmp_path):
    run, configs = finished_run
    (tmp_path / "plan").mkdir()
    plan = link_project(tmp_path / "plan")
    _, jobs = planned_jobs(plan, configs)
    stores = {  # named_paths: a name may stand for several stores (rule atp's, one per ablation)
        path: (job.rule.name, name)
        for job in jobs
        for name, path in named_paths(job.output)
        if str(path).endswith(".zarr")
    }
    assert len(stores) > 50
    for path, key in stores.items():
        arrays = sum(1 for p in (run / path).iterdir() if p.is_dir())
        allowed, _ = disk.STORE_ARRAYS[key]
        assert arrays <= allowed, (path, key, arrays, allowed)
