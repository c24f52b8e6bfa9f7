import re
import sys
from pathlib import Path

from snakemake.utils import validate

# The selfrepair package sits beside workflow/; make it importable even when not installed.
sys.path.insert(0, str(Path(workflow.basedir).parent))

import selfrepair.config as sr_config  # noqa: E402
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
DATA = config["data"]
ENGINE = config["engine"]
ABLATIONS = config["ablations"]
# Frozen-LayerNorm variants run as their own "ablation" (e.g. resample-frozen-ln).
VARIANTS = ABLATIONS + [f"{a}-frozen-ln" for a in ENGINE["frozen_ln"]]
SHARDS = [f"{i:03d}" for i in range(sr_config.n_shards(DATA))]
# Figures: the paper's model/heads per figure, or the configured substitutes (see figures.smk).
FIGURES = config["figures"]
FIGURE_TARGETS = sr_config.figure_targets(config)
N_PREDICTIONS = sr_config.n_predictions(DATA)  # tokens measured per model


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


def summary_paths(models, ablation):
    return expand(
        "results/{model}/summary/{ablation}.zarr", model=models, ablation=ablation
    )


def figure_paths(name):
    return {
        "pdf": f"results/figures/{name}.pdf",
        "png": f"results/figures/{name}.png",
    }


TOP_SELECTION = captions.Selection(ENGINE["top_fraction"], N_PREDICTIONS).describe()
ALL_SELECTION = captions.Selection(None, N_PREDICTIONS).describe()

# Every figure of rules/figures.smk (and other figure files), by name; each makes
# results/figures/<name>.pdf and .png. Add a figure here and it joins all_outputs().
FIGURE_NAMES = ["fig01_self_repair_per_head"]


def figure_outputs():
    return [path for name in FIGURE_NAMES for path in figure_paths(name).values()]


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
    return outputs
