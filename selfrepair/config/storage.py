"""The bytes on disk the planned jobs write, estimated before the first job (the Snakefile's
onstart; storage_check prints them and refuses when the disk lacks them) per (model, stage) and
part: results/, resources/ and logs.

An upper bound: each store's arrays at their uncompressed sizes from the shapes the stages write
(store_bytes; Zarr compresses), plus the files and folders a store is made of in whole blocks
(disk.store_disk_bytes); every other output under results/ a constant by suffix (FILE_BYTES)
in whole blocks; the trained tokenizers and models under resources/ (disk); per job its log,
benchmark and Snakemake's records. A stage is the rules file of the rule; a training checkpoint
(<model>@step<N>) counts under its model. What the config cannot know (a hub model neither in
the catalogue's paper models nor cached) is "unknown", never guessed: the total is then a
lower bound. A prompts task is sized from its file's lines (tasks.task_shape)."""

from __future__ import annotations

from collections.abc import Iterable
from functools import partial
from pathlib import Path
from typing import Any

from selfrepair.catalogue import Shapes, paper_model
from selfrepair.config import disk
from selfrepair.config.checkpoints import checkpoint_models, keeps_every_token, model_checkpoints
from selfrepair.config.layout import (
    ablation_variants,
    estimated_as,
    n_predictions,
    n_rows,
    n_shards,
    shard_bounds,
    top_count,
)
from selfrepair.config.memory import cached_hub_entry, model_size
from selfrepair.config.models import model_dims
from selfrepair.config.shown import shown_heads
from selfrepair.config.store_bytes import (  # noqa: F401 (the formulas, storage.<name> too)
    F32,
    F64,
    I64,
    all_ablation_bytes,
    clean_bytes,
    clean_top_bytes,
    detail_bytes,
    repair_summary_bytes,
    repair_sums_bytes,
    top_ablation_bytes,
)
from selfrepair.config.tasks import task_shape
from selfrepair.variables import HEAD_VARIABLES, n_components

__all__ = ["PARTS", "all_ablation_bytes", "clean_bytes", "estimate_storage"]
__all__ += ["job_bytes", "stage_of", "storage_dims", "top_ablation_bytes"]

# Largest measured in the reduced demo: JSON 1.4 KB, a table 30 KB, a PDF 85 KB, a PNG 574 KB
# (training_self_repair), an index page; the explorer pages are counted from their contents.
FILE_BYTES = {".json": 4096, ".csv": 64 * 1024, ".pdf": 256 * 1024, ".png": 768 * 1024}
FILE_BYTES |= {"": 256 * 1024}  # by suffix; "": the others
HEAD_SUMMARY_BYTES = 128  # per head: summarize_heads' summary, its intervals; atp_summary
STAGES = ("data", "clean", "ablation", "attribution", "summaries", "mechanisms", "atp")
STAGES += ("figures", "explorer", "training", "tasks", "methods")  # the table's order: the DAG's
# A job's stage is the rules file Snakemake read its rule from (job.rule.snakefile): the
# workflow hands it over with the jobs, and the package reads no workflow file.
PARTS = ("results", "resources", "logs")  # what the estimate adds up, each part on its own
NO_MODEL = "(all)"  # the table's model of jobs of no single model: figures, tables, index pages


def storage_dims(entry: dict[str, Any], config: dict[str, Any]) -> Shapes | None:
    """A model's layers, heads and MLP width from its `train`, its checkpoint's config.json or
    a hub model's in the local Hugging Face cache (memory.model_size, models.model_dims), else
    the catalogue's paper models (d_mlp None if not there); None if dims are unknown."""
    entry = cached_hub_entry(entry)
    dims, size = model_dims(entry), model_size(entry, config)
    paper = paper_model(entry["name"])
    d_mlp = size.d_mlp if size else (paper.shapes.d_mlp if paper else None)
    return None if dims is None else Shapes(n_layers=dims[0], n_heads=dims[1], d_mlp=d_mlp)


def _clean(run: _Run, w: dict, d: Shapes) -> int:
    tokens = run.shard(w["shard"])[1]
    if run.engine.get("store_tokens", "top") == "all":
        return clean_bytes(d, tokens)
    return clean_top_bytes(d, tokens, run.k(w["model"]))


class _Run:
    """The config as the estimates read it: layout, sizes and shown heads by model."""

    def __init__(self, config: dict[str, Any], models: dict[str, dict[str, Any]]) -> None:
        self.config, self.data, self.engine = config, config["data"], config["engine"]
        self.models = models
        self.checkpoints = ckpts = checkpoint_models(models)
        self.owner = {k: e["checkpoint"]["model"] for k, e in ckpts.items()}
        self.dims = {m: storage_dims(e, config) for m, e in models.items()}
        first = config.get("checkpoint_shards") or n_shards(self.data)
        self.shards = {k: range(first) for k in ckpts}  # a model's own: every shard
        self.heads = shown_heads(config, models)

    def model(self, key: str) -> str:
        return self.owner.get(key, key)

    def n_tokens(self, key: str) -> int:
        return n_predictions(self.data, self.shards.get(key))

    def k(self, key: str) -> int:
        return top_count(self.n_tokens(key), self.engine["top_fraction"])

    def shard(self, shard: str) -> tuple[int, int]:
        """(rows, predictions) of one shard."""
        start, stop = shard_bounds(self.data, int(shard))
        return stop - start, n_predictions(self.data, [int(shard)])

    def shown(self, key: str, experiment: str) -> int:
        return self.heads.get(self.model(key), {}).get(experiment, 0)

    def keeps_every_token(self, key: str, shard: str) -> bool:
        """Whether an ablate job keeps every token (checkpoints.keeps_every_token)."""
        return keeps_every_token(self.config, self.checkpoints, key, int(shard))


def _ablate(run: _Run, w: dict, d: Shapes) -> int:
    """An ablate job's stores: its {ablation}'s (checkpoint_ablate), or every variant's."""
    kinds = [w["ablation"]] if "ablation" in w else ablation_variants(run.config)
    rows, tokens = run.shard(w["shard"])
    sums = repair_sums_bytes(d) if run.engine["attribution"] else 0
    if run.keeps_every_token(w["model"], w["shard"]):
        return len(kinds) * (all_ablation_bytes(d.heads, tokens, rows) + sums)
    explorer, resamples = run.config["explorer"], run.config["figures"]["bootstrap"]["resamples"]
    return sum(top_ablation_bytes(
        d.heads, run.n_tokens(w["model"]), tokens, rows, run.engine["top_fraction"], resamples,
        explorer["tokens_per_head"], explorer["context"], run.shown(w["model"], f"per_token {a}"),
    ) + sums for a in kinds)  # fmt: skip


def _mechanism(run: _Run, w: dict, d: Shapes, rule: str) -> int | None:
    """neuron_effects (5 float32 per head and token; per head, selection and selected token its
    row, position, score, under engine.store_tokens: all both neuron DEs; its reductions: float64
    per neuron and rank), norm_ratios (5 float32 and a bool per head and token), reinforcement."""
    mech, tokens, k = run.config["mechanisms"], run.n_tokens(w["model"]), run.k(w["model"])
    n = run.shown(w["model"], MECHANISM_OF[rule])
    if rule == "norm_ratios":
        return (n * (5 * F32 + 1) + F32) * tokens
    if rule == "self_reinforcement":
        spec = mech["reinforcement"]
        n += (d.n_layers - d.n_layers // 2) * d.n_heads if spec["second_half"] else 0
        return n * (1 + 2 * len(spec["scales"])) * spec["rows"] * (spec["seq_len"] - 1) * F32
    if d.d_mlp is None:
        return None
    reductions = n * 2 * (d.d_mlp * (len(mech["neurons"]["thresholds"]) + 4) + k * 6) * F64
    neurons = 2 * F32 * d.d_mlp if run.engine.get("store_tokens", "top") == "all" else 0
    return n * (5 * F32 * tokens + 2 * k * (neurons + 20)) + reductions


MECHANISM_OF = dict(neuron_effects="neurons", norm_ratios="norms")
MECHANISM_OF |= {"self_reinforcement": "reinforcement"}


def _atp(run: _Run, w: dict, d: Shapes) -> int:
    """Per (head, row) atp_row, atp_top, n_top, GradDrop combined (analysis.atp.graddrop_stored),
    in a store per ablation (one atp job writes every ablation's)."""
    rows, top = run.shard(w["shard"])[0], bool(run.engine["atp_top_graddrop"])
    sums = d.n_layers * d.heads * F64 * (1 + top)  # GradDrop summed over rows per dropped layer
    one = d.heads * rows * (F32 * (3 + top) + I64) + 2 * F32 * rows + sums  # 2: metric, n_scored
    return len(run.config["ablations"]) * one


def _explorer(run: _Run, w: dict, d: Shapes) -> int:
    """A model's page (task_explorer: on a task's answers, its ablations): per head, ablation
    and ranking its top tokens in context as text and numbers (a (head, ablation, ranking) entry
    of 24 context tokens measured at about 0.45 KB), with the page's own code."""
    ex = run.config["explorer"]
    ablations = (
        run.config["tasks"][w["task"]]["ablations"] if "task" in w else run.config["ablations"]
    )
    per_head = 2 * len(ablations) * ex["tokens_per_head"] * (ex["context"] * 24 + 128)
    return d.heads * per_head + FILE_BYTES[""]


def _sets_bytes(d: Shapes, n_sets: int, tokens: int) -> int:
    """A joint-sets store (engine.sets): per set and token, the variables and every component."""
    return n_sets * tokens * F32 * (n_components(d.n_layers, d.n_heads) + len(HEAD_VARIABLES))


def _task(run: _Run, w: dict, d: Shapes, rule: str) -> int:
    """The task stores, on answer positions (config.tasks.task_shape: a prompts file's rows at
    their longest bound)."""
    spec = run.config["tasks"][w["task"]]
    n, answers, width = task_shape(run.config, spec, run.models[run.model(w["model"])])
    if rule == "task_prompts":  # tokens, corrupted (int32), scored, counter, baseline, text
        return n * width * 24
    if rule == "task_clean":  # with counter and top1, and the metric's JSON
        return clean_bytes(d, answers) + 2 * F32 * answers + FILE_BYTES[".json"]
    if rule == "task_ablate":  # every head's tokens kept in the detail
        heads = all_ablation_bytes(d.heads, answers, answers) + repair_sums_bytes(d)
        return heads + detail_bytes(d, d.heads, answers)
    if rule in ("task_atp", "task_atp_per_kind"):  # per head and prompt (5 arrays), per answer
        # (2), GradDrop's sums; task_atp: a store per ablation of the task
        kinds = len(spec["ablations"]) if rule == "task_atp" else 1
        return kinds * (F32 * d.heads * (6 * n + 2 * answers) + 2 * 8 * d.n_layers * d.heads)
    if rule == "task_set_ablate":
        return _sets_bytes(d, len(spec["ablation_sets"]), answers)
    if rule == "task_methods":  # per candidate and answer: 7 methods' values, float64 at most
        return 8 * 7 * d.heads * answers
    return 2 * HEAD_SUMMARY_BYTES * d.heads + repair_summary_bytes(d)  # task_summary


SAME_AS = {"checkpoint_ablate": "ablate"}  # `use rule` variants sized as their base
# rule -> (run, wildcards, dims) -> bytes (None: unknown). Rules not here write no per-token or
# per-head store: FILE_BYTES per output under results/.
RULE_BYTES = {
    "clean_cache": _clean,
    "ablate": _ablate,
    "atp": _atp,
    "set_ablate": lambda r, w, d: _sets_bytes(
        d, len(r.config["ablation_sets"]), r.shard(w["shard"])[1]
    ),
    "head_top_tokens": lambda r, w, d: F32 * d.heads * r.k(w["model"]),  # int32 token numbers
    "repair_summary": lambda r, w, d: repair_summary_bytes(d),
    "repair_detail": lambda r, w, d: detail_bytes(
        d, r.shown(w["model"], "detail"), r.k(w["model"])
    ),
    "summarize_heads": lambda r, w, d: 2 * HEAD_SUMMARY_BYTES * d.heads,
    "atp_summary": lambda r, w, d: HEAD_SUMMARY_BYTES * d.heads * (d.n_layers + 1),
    "task_atp_summary": lambda r, w, d: HEAD_SUMMARY_BYTES * d.heads * (d.n_layers + 1),
    "head_explorer": _explorer,
    "task_explorer": _explorer,
    **{rule: partial(_mechanism, rule=rule) for rule in MECHANISM_OF},
    **{
        rule: partial(_task, rule=rule)
        for rule in (
            "task_prompts",
            "task_clean",
            "task_ablate",
            "task_set_ablate",
            "task_summary",
            "task_atp",
            "task_atp_per_kind",
            "task_methods",
        )
    },
}


def named_paths(outputs: Any) -> list[tuple[str | None, str]]:
    """(name, path) of a job's outputs: Snakemake's named list, a dict or a plain list; a name
    may stand for a list of paths (rule atp's stores, one per ablation)."""
    named = list(outputs.items()) if hasattr(outputs, "items") else []
    names = {str(p): k for k, v in named for p in ([v] if isinstance(v, str) else v)}
    paths = [p for _, v in named for p in ([v] if isinstance(v, str) else v)]
    return [(names.get(str(p)), str(p)) for p in (paths if isinstance(outputs, dict) else outputs)]


def data_bytes(run: _Run, rule: str, wildcards: dict) -> int | None:
    """The uncompressed bytes of the arrays one job writes (RULE_BYTES; 0: none; None: unknown)."""
    rule, wildcards = estimated_as(SAME_AS.get(rule, rule), wildcards)
    if rule in ("tokenize", "share_tokens"):  # the model's rows, int32 (a checkpoint: a copy)
        return F32 * n_rows(run.data) * run.data["seq_len"]
    if rule not in RULE_BYTES:
        return 0
    dims = run.dims.get(run.model(wildcards["model"]))
    return None if dims is None else RULE_BYTES[rule](run, wildcards, dims)


def resource_bytes(run: _Run, rule: str, wildcards: dict, path: str, block: int) -> int:
    """What a job writes under resources/: a trained tokenizer, a trained model's folder, a
    model's processed weights."""
    if rule == "train_tokenizer":
        vocab = run.config["tokenizers"][wildcards["tokenizer"]].get("vocab_size", 4096)
        return disk.tokenizer_dir_bytes(vocab, block)
    entry = run.models.get(wildcards.get("model", ""))
    if rule == "process_weights":  # the float32 weights and model.json, the model's and each
        dims = run.dims.get(run.model(wildcards["model"]))  # of its training checkpoints'
        weights = disk.on_disk(disk.weights_bytes(dims), block) if dims else 0
        copies = 1 + len(model_checkpoints(wildcards["model"], entry)) if entry else 1
        return copies * (weights + 2 * disk.on_disk(FILE_BYTES[""], block))
    size = model_size(entry, run.config) if rule == "train_model" and entry else None
    if size is None:
        return disk.on_disk(FILE_BYTES[""], block)
    return disk.model_dir_bytes(size, len(entry["train"].get("keep_steps") or []), block)


def job_bytes(
    run: _Run, rule: str, wildcards: dict, outputs: Any, block: int = disk.BLOCK
) -> dict[str, int | None]:
    """{"results": .., "resources": ..}: the bytes on disk of one planned job's outputs, in whole
    blocks (None: unknown). A store: its files and folders (disk.store_disk_bytes, its arrays
    from disk.STORE_ARRAYS by rule and output name) with the job's array bytes; another file:
    FILE_BYTES by suffix."""
    named, (rule, wildcards) = (
        named_paths(outputs),
        estimated_as(SAME_AS.get(rule, rule), wildcards),
    )
    mine = [(n, p) for n, p in named if Path(p).parts[:1] == ("results",)]
    theirs = [p for _, p in named if Path(p).parts[:1] == ("resources",)]
    data = data_bytes(run, rule, wildcards)
    dims = run.dims.get(run.model(wildcards.get("model", ""))) or Shapes(n_layers=0)
    shown = run.shown(wildcards.get("model", ""), MECHANISM_OF.get(rule, ""))
    stores = [n for n, p in mine if p.endswith(".zarr")]
    size = sum(disk.on_disk(FILE_BYTES.get(Path(p).suffix, FILE_BYTES[""]), block) for _, p in mine)
    size -= sum(disk.on_disk(FILE_BYTES[""], block) for _ in stores)  # stores: counted below
    shards = n_shards(run.data)
    for i, name in enumerate(stores):
        every = rule == "ablate" and run.keeps_every_token(wildcards["model"], wildcards["shard"])
        key = (rule, name, "all") if every and name == "heads" else (rule, name)
        arrays, chunked = disk.STORE_ARRAYS.get(key, disk.OTHER_STORE)
        per_array = disk.chunk_multiplier(chunked, dims.n_layers, shards, shown)
        size += disk.store_disk_bytes((data or 0) * (i == 0), arrays, per_array, block)
    if not stores:
        size += disk.on_disk(data or 0, block)
    resources = sum(resource_bytes(run, rule, wildcards, p, block) for p in theirs)
    return {"results": None if data is None else size, "resources": resources}


def job_data_bytes(config: dict[str, Any], models: dict, job: Any) -> int | None:
    """The uncompressed array bytes one planned job writes (data_bytes; None: unknown)."""
    return data_bytes(_Run(config, models), job.rule.name, dict(job.wildcards.items()))


def output_bytes(
    config: dict[str, Any], models: dict, rule: str, wildcards: dict, outputs: Any
) -> int | None:
    """The bytes on disk one job's outputs take (job_bytes' results and resources; None: unknown)."""
    sizes = job_bytes(_Run(config, models), rule, wildcards, outputs)
    return None if None in sizes.values() else sum(sizes.values())


def estimate_storage(
    config: dict[str, Any],
    models: dict[str, dict[str, Any]],
    jobs: Iterable[Any],
    block: int = disk.BLOCK,
) -> dict[tuple[str, str, str], int | None]:
    """{(model, stage, part): bytes on disk the planned jobs write, None when some job's size is
    unknown}, in the jobs' order; model NO_MODEL for jobs of no single model; part one of PARTS:
    results/ (stores, figures, tables), resources/ (tokenizers, trained models) and logs (each
    job's log and benchmark, Snakemake's records), every file and folder in whole blocks.

    Args:
        config: the validated workflow config.
        models: its model entries (validate_run's result, the rules' MODELS).
        jobs: the planned jobs (workflow.dag.needrun_jobs()): .rule.name, .wildcards, .output,
            .log, .benchmark.
        block: the disk's block size (disk.block_size).
    """
    run = _Run(config, models)
    out: dict[tuple[str, str, str], int | None] = {}
    paths: dict[str, list[str]] = {part: [] for part in PARTS}
    for job in jobs:
        rule, w = job.rule.name, dict(job.wildcards.items())
        stage = stage_of(job)
        model = run.model(w["model"]) if "model" in w else NO_MODEL
        logs = [str(p) for p in getattr(job, "log", [])]
        benchmark = [str(job.benchmark)] if getattr(job, "benchmark", None) else []
        sizes = job_bytes(run, rule, w, job.output, block)
        outputs = [path for _, path in named_paths(job.output)]
        runtime = int((getattr(job, "resources", None) or {}).get("runtime", 0) or 0)
        sizes["logs"] = disk.log_bytes(len(logs), len(benchmark), len(outputs), runtime, block)
        for part, size in sizes.items():
            before = out.get((model, stage, part), 0)
            out[model, stage, part] = None if before is None or size is None else before + size
        for path in outputs + logs + benchmark:
            paths[part_of(path)].append(path)
    for part, files in paths.items():  # every folder the files lie in, once
        if files:
            out[NO_MODEL, "folders", part] = disk.folders_bytes(files, block=block)
    return out


def stage_of(job: Any) -> str:
    """The stage of a planned job: the stem of the rules file that defines its rule
    (workflow/rules/<stage>.smk; `use rule ... as X with:` is X's file)."""
    return Path(str(getattr(job.rule, "snakefile", "other"))).stem


def part_of(path: str) -> str:
    """The part of PARTS a path of a planned job counts in."""
    top = Path(path).parts[:2]
    if top in (("results", "logs"), ("results", "benchmarks")):
        return "logs"
    return "resources" if top[:1] == ("resources",) else "results"
