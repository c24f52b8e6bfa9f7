import json
import re
import sys
from pathlib import Path

from snakemake.utils import validate

# The selfrepair package sits beside workflow/; make it importable even when not installed.
sys.path.insert(0, str(Path(workflow.basedir).parent))

import selfrepair.config.cluster as sr_cluster  # noqa: E402
import selfrepair.config.core as sr_config  # noqa: E402
from selfrepair.plots import captions  # noqa: E402

try:
    validate(config, schema="../schemas/config.schema.yaml")
except Exception as err:
    detail = sr_config.validation_error_from(err)
    if detail is None:
        raise
    raise sr_config.ConfigError(sr_config.describe_validation_error(detail)) from None

MODELS = sr_config.model_entries(config)
sr_config.check_hub_names(MODELS)
sr_config.check_run(config, MODELS)


DATA = config["data"]
ENGINE = config["engine"]
ABLATIONS = config["ablations"]
# Frozen-LayerNorm variants run as their own "ablation" (e.g. resample-frozen-ln).
VARIANTS = ABLATIONS + [f"{a}-frozen-ln" for a in ENGINE["frozen_ln"]]
SHARDS = [f"{i:03d}" for i in range(sr_config.n_shards(DATA))]


wildcard_constraints:
    model="|".join(re.escape(m) for m in MODELS),
    tokenizer="|".join(re.escape(t) for t in config["tokenizers"]) or "(?!)",
    ablation="|".join(re.escape(v) for v in VARIANTS),
    shard=r"\d+",


def model_entry(wildcards):
    return MODELS[wildcards.model]


def checkpoint_path(model):
    """Local checkpoint of a model: trained by the workflow, given by path, or None (hub)."""
    entry = MODELS[model]
    if "train" in entry:
        return f"resources/models/{model}"
    return entry.get("path")


def model_input(wildcards):
    path = checkpoint_path(wildcards.model)
    return {"model_dir": path} if path else {}


def shard_bounds(wildcards):
    return sr_config.shard_bounds(DATA, int(wildcards.shard))


def batch_size(wildcards):
    return MODELS[wildcards.model].get("batch_size", ENGINE["batch_size"])


# Resources of a model's shard jobs (clean_cache, ablate, train_model), from the config: the
# SLURM profile (profiles/slurm) only adds the GPU. Memory and wall time grow with the attempt,
# so a job retried by `retries` after running out of either asks for more.
def model_threads(wildcards):
    return sr_cluster.model_resources(config, MODELS[wildcards.model])["threads"]


def model_mem_mb(wildcards, attempt):
    mem_mb = sr_cluster.model_resources(config, MODELS[wildcards.model])["mem_mb"]
    return sr_cluster.mem_mb_for_attempt(mem_mb, attempt)


def model_runtime(wildcards, attempt):
    runtime = sr_cluster.model_resources(config, MODELS[wildcards.model])["runtime"]
    return sr_cluster.runtime_for_attempt(runtime, attempt)


def run_attrs(wildcards):
    """Provenance recorded on every store of a model: the config that made it."""
    return {
        "model": wildcards.model,
        "model_entry": MODELS[wildcards.model],
        "seed": config["seed"],
        "data": DATA,
        "engine": ENGINE,
        "device": config["device"],
        "dtype": config["dtype"],
    }


def clean_shards(model):
    return expand("results/{model}/clean/shard-{shard}.zarr", model=model, shard=SHARDS)


def ablation_shards(wildcards):
    return expand(
        "results/{model}/ablation/{ablation}/shard-{shard}.zarr",
        model=wildcards.model,
        ablation=wildcards.ablation,
        shard=SHARDS,
    )


# --- figures -----------------------------------------------------------------------------
# The paper's model/heads per figure, or the configured substitutes; see rules/figures.smk.
FIGURES = config["figures"]
FIGURE_TARGETS = sr_config.figure_targets(config)
# Figures whose substitute heads are picked at run time (rule pick_substitute).
FIGURE_PICKS = {k: t for k, t in FIGURE_TARGETS.items() if t.picked}
FIG_ABLATION = sr_config.figure_ablation(config)
OTHER_MODELS = sr_config.other_models(config)  # Figs 21-24
FROZEN_BASE = sr_config.frozen_ln_ablation(config)  # None: no frozen-LayerNorm run
N_PREDICTIONS = sr_config.n_predictions(DATA)  # tokens measured per model
TOP_SELECTION = captions.Selection(ENGINE["top_fraction"], N_PREDICTIONS).describe()
ALL_SELECTION = captions.Selection(None, N_PREDICTIONS).describe()
BOOTSTRAP_NOTE = (
    "Intervals: {level:.0%} percentile bootstrap over each head's tokens "
    "({resamples:,} resamples, seed {seed})."
).format(seed=config["seed"], **FIGURES["bootstrap"])


def summary_paths(models, ablation):
    return expand(
        "results/{model}/summary/{ablation}.zarr", model=models, ablation=ablation
    )


def interval_paths(models, ablation):
    return expand(
        "results/{model}/intervals/{ablation}.zarr", model=models, ablation=ablation
    )


def shard_paths(model, ablation):
    return expand(
        "results/{model}/ablation/{ablation}/shard-{shard}.zarr",
        model=model,
        ablation=ablation,
        shard=SHARDS,
    )


def fig05_shards(wildcards):
    """Fig 5's head under every ablation: the shards of each, by ablation name, and its pick
    record when picked."""
    shards = {a: shard_paths(FIGURE_TARGETS["fig05"].model, a) for a in ABLATIONS}
    return shards | {"picks": pick_paths({"fig05": FIGURE_TARGETS["fig05"]})}


def figure_paths(name):
    return {
        "pdf": f"results/figures/{name}.pdf",
        "png": f"results/figures/{name}.png",
    }


def pick_path(key, target):
    """The pick record of a target whose substitute heads are picked at run time (rule
    pick_substitute); key: the pick key (figure key, fig08-<i> for Fig 8's entries)."""
    return f"results/{target.model}/substitutes/{key}.json"


def pick_paths(targets):
    """The pick records among targets (pick key -> FigureTarget) whose heads are picked."""
    return [pick_path(key, t) for key, t in targets.items() if t.picked]


def resolved(target, paths):
    """target with the heads of its pick record among paths (a rule's `picks` input), or as
    configured when not picked. Before the record exists (a dry run's DAG) the caption cannot
    name the heads yet; captions are rendered when the job runs or the report is built.
    """
    if not target.picked:
        return target
    for path in paths:
        if Path(path).exists():
            record = json.loads(Path(path).read_text())
            if record["target"] == target.key:
                return target.resolved(record)
    return target.resolved(
        {
            "model": target.model,
            "heads": [],
            "description": "heads to be picked when the workflow runs",
        }
    )


def figure_caption(models, ablations, selection, target=None, extra=()):
    """The 'Measured' paragraph of a caption (selfrepair.plots.captions.measured)."""
    subs = [target.substitution()] if target is not None and target.substituted else []
    return captions.measured(
        models=models,
        ablations=ablations,
        n_tokens=N_PREDICTIONS,
        selection=selection,
        substitutions=subs,
        extra=extra,
    )


def one_target_caption(target, ablations):
    """The caption paragraph of a figure of one model's heads (Figs 3, 5), on all tokens."""
    label = target.label(target.model, target.heads)
    return figure_caption([label], ablations, ALL_SELECTION, target)


# Every figure by name; each makes results/figures/<name>.pdf and .png. Add a figure here and
# it joins all_outputs().
FIGURE_NAMES = [
    "fig01_self_repair_per_head",
    "fig02_de_vs_logit_drop",
    "fig03_tokens_de_vs_logit_drop",
    "fig05_tokens_by_ablation",
    "fig06_ln_share",
    "fig11_ln_share_unclipped",
    "fig21-24_de_vs_logit_drop_other_models",
] + (["extra_frozen_ln"] if FROZEN_BASE else [])
TABLE_OUTPUTS = ["results/tables/head_summary.csv", "results/tables/head_summary.html"]


def figure_outputs():
    paths = [path for name in FIGURE_NAMES for path in figure_paths(name).values()]
    return paths + TABLE_OUTPUTS


def all_outputs():
    outputs = []
    for model, entry in MODELS.items():
        outputs += clean_shards(model)
        outputs += expand(
            "results/{model}/summary/{ablation}.zarr", model=model, ablation=ABLATIONS
        )
        if "train" in entry:
            outputs.append(f"results/{model}/training.json")
    outputs += figure_outputs()
    outputs += mechanism_outputs()  # rules/mechanisms.smk
    return outputs
