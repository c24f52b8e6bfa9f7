# Shared by every rules file (the config checked against its schema; the run's models, shards
# and figure targets; the input functions and caption helpers of the rules).
import collections
import re
import sys
import types
from pathlib import Path

# The selfrepair package sits beside workflow/; make it importable even when not installed.
sys.path.insert(0, str(Path(workflow.basedir).parent))

import selfrepair.ablations as sr_ablations  # noqa: E402
import selfrepair.config as sr_config  # noqa: E402
import selfrepair.config.figures as sr_figures  # noqa: E402
import selfrepair.config.inputs as sr_inputs  # noqa: E402
import selfrepair.config.prompt_seeds as sr_prompt_seeds  # noqa: E402
from selfrepair.plots import captions  # noqa: E402
from selfrepair.stages import records as sr_records  # noqa: E402
from selfrepair.variables import METRIC_LABELS  # noqa: E402

# --config key={...}: Snakemake keeps the values inside a dictionary strings ("false"); read them
# as a config file would before the schema sees them.
sr_config.type_config_overrides(config, workflow.config_settings.config or {})
# The schema (filling in its defaults), then the checks it cannot make: one line naming the key.
RUN_MODELS = sr_config.validate_run(
    config, Path(workflow.basedir) / "schemas" / "config.schema.yaml"
)
# MODELS: the paper path's models (text shards, figures, tables, explorer); a tasks_only model
# (RUN_MODELS has it too) is trained if need be and measured on its tasks only.
MODELS = sr_config.text_models(RUN_MODELS)
# Training checkpoints (selfrepair.config.checkpoints): every intermediate checkpoint of a model
# is a model key of its own, <model>@step<N>, on which the clean and ablation rules run
# unchanged (rules/training.smk asks for them); the model's own key is its final checkpoint.
# ENTRIES: every model key's entry.
CHECKPOINTS = sr_config.checkpoint_models(MODELS)
ENTRIES = RUN_MODELS | CHECKPOINTS

# --report with another run's config (config/config.yaml when --configfile is left out): say so
# in one line before Snakemake warns of every file's missing metadata.
if "--report" in {a.split("=")[0] for a in sys.argv}:
    # Snakemake's report prints each job's params with str() (raw lists, None and the caption's
    # markdown, which it already shows rendered): print them readably, the caption left out.
    from snakemake import logging as snakemake_logging

    snakemake_logging.format_dict = sr_config.readable_params
    problem = sr_config.report_config_problem(
        list(MODELS),
        list(ENTRIES),
        (
            [p.name for p in Path("results").iterdir() if p.is_dir()]
            if Path("results").is_dir()
            else []
        ),
        [str(f) for f in workflow.config_settings.configfiles],
    )
    if problem:
        raise sr_config.ConfigError(problem)


DATA = config["data"]
ENGINE = config["engine"]
ABLATIONS = config["ablations"]
# Frozen-LayerNorm variants run as their own "ablation" (e.g. resample-frozen-ln).
VARIANTS = sr_config.ablation_variants(config)
SHARDS = [f"{i:03d}" for i in range(sr_config.n_shards(DATA))]


# Tasks (beyond the paper; rules/tasks.smk): each task's models, by task name.
TASKS = config["tasks"]
TASK_MODELS = sr_config.task_models(config, RUN_MODELS)
# A task of prompt_seeds is one entry per seed, <task>@seed<s> (config.prompt_seeds); by its name
# its seeds' entries, whose method tables rule method_seeds aggregates under tasks/<task>/.
SEEDED_TASKS = sr_prompt_seeds.seeded_tasks(TASKS)


wildcard_constraints:
    model="|".join(re.escape(m) for m in ENTRIES),
    tokenizer="|".join(re.escape(t) for t in config["tokenizers"]) or "(?!)",
    ablation="|".join(re.escape(v) for v in VARIANTS),
    shard=r"\d+",
    task="|".join(re.escape(t) for t in TASKS) or "(?!)",
    seeded_task="|".join(re.escape(t) for t in SEEDED_TASKS) or "(?!)",
    task_ablation="|".join(re.escape(a) for a in sr_ablations.TASK_VARIANTS),
    ablation_set=r"[A-Za-z0-9][A-Za-z0-9._-]*",
    # "" for running text, tasks/<task>/ for a task (sr_config.dataset_of)
    dataset="(tasks/(" + ("|".join(re.escape(t) for t in TASKS) or "(?!)") + ")/)?",


def model_entry(wildcards):
    return ENTRIES[wildcards.model]


def checkpoint_path(model):
    """Local checkpoint of a model: trained by the workflow, given by path, or None (hub). A
    training checkpoint's: its own folder, or its trained model's (ModelJob takes the
    subfolder), or None (a hub revision)."""
    entry = ENTRIES[model]
    if "checkpoint" in entry:
        ckpt = entry["checkpoint"]
        return ckpt.get("path") or (
            checkpoint_path(ckpt["model"]) if "subdir" in ckpt else None
        )
    if "train" in entry:
        return f"resources/models/{model}"
    return entry.get("path")


def model_input(wildcards):
    """A model job's local folder, and every file in it when the config names the folder (a
    `path`), so that editing a file there reruns what read it (Snakemake tracks a folder by
    its own mtime only)."""
    path = checkpoint_path(wildcards.model)
    if not path:
        return {}
    files = sr_inputs.model_folder_files(ENTRIES[wildcards.model])
    return {"model_dir": path} | ({"model_files": files} if files else {})


def model_job_input(wildcards):
    """A model job's inputs: model_input and the model's processed weights (rule
    process_weights), from which it runs the TransformerLens-free stand-in. A training
    checkpoint's are in its model's folder (written by the model's one process_weights job:
    ModelJob reads the checkpoint's subfolder)."""
    ckpt = ENTRIES[wildcards.model].get("checkpoint")
    owner = ckpt["model"] if ckpt else wildcards.model
    return model_input(wildcards) | {"weights": f"resources/weights/{owner}"}


def checkpoints_of(model):
    """The model keys of a model's training checkpoints (`<model>@step<N>`), by step."""
    return [k for k, e in CHECKPOINTS.items() if e["checkpoint"]["model"] == model]


def process_weights_input(wildcards):
    """process_weights' inputs: the model's folder (model_input) and each checkpoint's own
    folder, where it has one outside the model's (a trained model's are inside it)."""
    folders = [checkpoint_path(k) for k in checkpoints_of(wildcards.model)]
    own = model_input(wildcards)
    others = [f for f in folders if f and f != own.get("model_dir")]
    return own | ({"checkpoint_dirs": others} if others else {})


def task_tokenizer_input(wildcards):
    """task_prompts' tokenizer: a trained model's trained tokenizer folder (so that its prompts
    are checked right after train_tokenizer, before the model trains), else the model's own
    folder (model_input; none for a hub model)."""
    entry = ENTRIES[wildcards.model]
    if "train" in entry:
        return {"tokenizer": f"resources/tokenizers/{entry['train']['tokenizer']}"}
    return model_input(wildcards)


def task_file_input(wildcards):
    """The file a task reads (a prompts task's JSONL), if any."""
    return sr_inputs.task_files(TASKS[wildcards.task])


def shard_bounds(wildcards):
    return sr_config.shard_bounds(DATA, int(wildcards.shard))


def batch_size(wildcards):
    return ENTRIES[wildcards.model].get("batch_size", ENGINE["batch_size"])


# Resources of a model's shard jobs (clean_cache, ablate, train_model), from the config: the
# SLURM profile (profiles/slurm) only adds the GPU. Memory and wall time grow with the attempt,
# so a job retried by `retries` after running out of either asks for more.
def model_threads(wildcards):
    return sr_config.model_resources(config, ENTRIES[wildcards.model])["threads"]


def model_mem_mb(wildcards, attempt):
    mem_mb = sr_config.model_resources(config, ENTRIES[wildcards.model])["mem_mb"]
    return sr_config.mem_mb_for_attempt(mem_mb, attempt)


def model_runtime(wildcards, attempt):
    runtime = sr_config.model_resources(config, ENTRIES[wildcards.model])["runtime"]
    return sr_config.runtime_for_attempt(runtime, attempt)


def run_attrs(wildcards):
    """Provenance recorded on every store of a model: the config that made it."""
    return {
        "model": wildcards.model,
        "model_entry": ENTRIES[wildcards.model],
        "seed": config["seed"],
        "data": DATA,
        # store_tokens changes what is kept, never a number: the stores of both layouts
        # record the same config
        "engine": {k: v for k, v in ENGINE.items() if k != "store_tokens"},
        "device": config["device"],
        "dtype": config["dtype"],
    }


def shard_paths(kind, model, ablation=None):
    """The shard stores of one kind a model key measures (kind: "clean", or "ablation" and
    "attribution" of one ablation variant): every shard, or a training checkpoint's first
    `checkpoint_shards` (CHECKPOINT_SHARDS, rules/training.smk's section below)."""
    shards = CHECKPOINT_SHARDS if model in CHECKPOINTS else SHARDS
    folder = Path("results", model, kind, *([ablation] if ablation else [])).as_posix()
    return [f"{folder}/shard-{shard}.zarr" for shard in shards]


def shards_of(kind):
    """Input function: the `kind` shards of the job's model (and ablation wildcard)."""
    return lambda w: shard_paths(kind, w.model, w.get("ablation"))


# --- figures -----------------------------------------------------------------------------
# The paper's model/heads per figure, or the configured substitutes (rules/figures.smk).
FIGURES = config["figures"]
FIGURE_TARGETS = sr_config.figure_targets(config)
# Figures whose substitute heads are picked at run time (rule pick_substitute).
FIGURE_PICKS = {k: t for k, t in FIGURE_TARGETS.items() if t.picked}
FIG_ABLATION = sr_config.figure_ablation(config)
OTHER_MODELS = sr_config.other_models(config)  # Figs 21-24
FROZEN_BASE = sr_config.frozen_ln_ablation(config)  # None: no frozen-LayerNorm run
FROZEN_VARIANT = FROZEN_BASE and sr_config.ablation_variant(FROZEN_BASE, True)
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


def fig05_shards(wildcards):
    """Fig 5's head under every ablation: the shards of each, by ablation name, and its pick
    record when picked."""
    shards = {
        a: shard_paths("ablation", FIGURE_TARGETS["fig05"].model, a) for a in ABLATIONS
    }
    return shards | {"picks": pick_paths({"fig05": FIGURE_TARGETS["fig05"]})}


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
    record = sr_records.record_for(target.key, paths, missing_ok=True) or {
        "model": target.model,
        "heads": [],
        "description": "heads to be picked when the workflow runs",
    }
    return target.resolved(record)


# RMSNorm models with a gated MLP (Llama), by model -> the MLP's activation: their figures'
# captions say what the paper's LayerNorm terms and neurons are for them.
RMS_GATED = {
    m: act for m, e in RUN_MODELS.items() if (act := sr_config.rms_gated_activation(e))
}


def architecture_notes(models, neurons=False):
    """Caption sentences for the RMSNorm models among models (captions.rmsnorm_notes)."""
    shown = {m: RMS_GATED[m] for m in dict.fromkeys(models) if m in RMS_GATED}
    return captions.rmsnorm_notes(shown, neurons)


def figure_caption(models, ablations, selection, target=None, extra=()):
    """The 'Measured' paragraph of a caption (selfrepair.plots.captions.measured)."""
    subs = [target.substitution()] if target is not None and target.substituted else []
    notes = architecture_notes([target.model] if target is not None else models)
    return captions.measured(
        models=models,
        ablations=ablations,
        n_tokens=N_PREDICTIONS,
        selection=selection,
        substitutions=subs,
        extra=[*notes, *extra],
    )


def one_target_caption(target, ablations):
    """The caption paragraph of a figure of one model's heads (Figs 3, 5), on all tokens."""
    label = target.label(target.model, target.heads)
    return figure_caption([label], ablations, ALL_SELECTION, target)


# --- mechanisms -----------------------------------------------------------------------------
# The resolved targets of config["mechanisms"] (the paper's model and heads per figure, or named
# substitutes; selfrepair.config.mechanisms), the heads each model runs (rules/mechanisms.smk)
# and the captions of their figures.

MECH = config["mechanisms"]
MECH_TARGETS = sr_config.mechanism_targets(config)
NEURON_HEADS = sr_config.heads_by_model(
    MECH_TARGETS["fig07"] + MECH_TARGETS["fig08"] + MECH_TARGETS["fig15"]
)
NORM_HEADS = sr_config.heads_by_model(MECH_TARGETS["fig04"] + MECH_TARGETS["fig16_18"])
REINFORCEMENT_HEADS = sr_config.heads_by_model(MECH_TARGETS["fig09"])
# Substitutes whose heads are picked at run time from the run's stores (rule pick_substitute);
# the stages and figures read the picked heads from results/<model>/substitutes/<key>.json.
MECH_PICKS = sr_config.pick_targets(MECH_TARGETS)
PICKS = FIGURE_PICKS | MECH_PICKS
SHARD_BOUNDS = [list(sr_config.shard_bounds(DATA, int(s))) for s in SHARDS]
REINFORCEMENT_TOKENS = MECH["reinforcement"]["rows"] * (
    MECH["reinforcement"]["seq_len"] - 1
)
MLP_REPAIR_SELECTION = (
    f"the top {ENGINE['top_fraction']:.0%} of tokens by the MLP layer's self-repair "
    f"({sr_config.top_count(N_PREDICTIONS, ENGINE['top_fraction']):,} of "
    f"{N_PREDICTIONS:,} tokens)"
)
REINFORCEMENT_SELECTION = (
    f"the first {MECH['reinforcement']['rows']} token rows cut to "
    f"{MECH['reinforcement']['seq_len']} tokens, every position"
)


def target(key):
    """The (single) resolved target of a mechanism figure, as plain params."""
    return MECH_TARGETS[key][0].as_params()


def mech_picks(keys, model=None):
    """The pick records of the mechanism targets of these figure keys (of one model if given)."""
    return [
        pick_path(k, t)
        for k, t in MECH_PICKS.items()
        if k.split("-")[0] in keys and model in (None, t.model)
    ]


def pick_store(wildcards):
    """The store a pick reads: the model's reinforcement store (most_self_repressing) or its
    top-token store (largest_top_de: the mean clean DE on each head's top tokens, known before
    any ablation, so that an ablate job can keep the picked heads' every token).
    """
    target = PICKS[wildcards.key]
    if target.model != wildcards.model:
        raise ValueError(
            f"pick {wildcards.key} is made in {target.model}, not {wildcards.model}"
        )
    if target.pick["criterion"] == "most_self_repressing":
        return f"results/{target.model}/reinforcement/reinforcement.zarr"
    return f"results/{target.model}/attribution/top_tokens.zarr"


def mech_caption(key, ablations, selection, picks=(), n_tokens=N_PREDICTIONS, extra=()):
    """The 'Measured' paragraph of a mechanism figure's caption (picks: the rule's pick
    records, naming picked substitutes and the values that selected them)."""
    targets = [resolved(t, picks) for t in MECH_TARGETS[key]]
    models = list(dict.fromkeys(t.model for t in targets))
    notes = architecture_notes(models, neurons=key in ("fig07", "fig08", "fig15"))
    return captions.measured(
        models=models,
        ablations=ablations,
        n_tokens=n_tokens,
        selection=selection,
        substitutions=[t.substitution() for t in targets if t.substituted],
        extra=[*notes, *extra],
    )


def norm_paths(model):
    return expand(
        "results/{model}/norms/{ablation}.zarr", model=model, ablation=ABLATIONS
    )


# --- final outputs ----------------------------------------------------------------------------
# Every figure of the one list (selfrepair.config.figures) that this run makes.
FIGURE_LIST = sr_figures.run_figures(
    bool(FROZEN_BASE),
    attribution=config["engine"]["attribution"],
    training=bool(CHECKPOINTS),
    atp=config["engine"]["atp"],
)


def figure_outputs(kinds):
    """The files of the run's figures of these kinds, as their rules write them (rules/
    figures.smk, attribution.smk, training.smk: the paths are in the rules)."""
    return [
        path for f in FIGURE_LIST if f.kind in kinds for path in rules_output(f.rule)
    ]


def rules_output(rule):
    return list(getattr(rules, rule).output)


def mechanism_outputs():
    """Every final output of the mechanism rules: stores, reductions and figures."""
    outputs = [pick_path(k, t) for k, t in PICKS.items()]
    outputs += [f"results/{m}/neurons/reductions.zarr" for m in NEURON_HEADS]
    outputs += [path for m in NORM_HEADS for path in norm_paths(m)]
    outputs += [
        f"results/{m}/reinforcement/reinforcement.zarr" for m in REINFORCEMENT_HEADS
    ]
    return outputs + figure_outputs(["mechanism"])


def all_outputs():
    outputs = []
    for model, entry in MODELS.items():
        outputs += shard_paths("clean", model)
        outputs += expand(
            "results/{model}/summary/{ablation}.zarr", model=model, ablation=ABLATIONS
        )
        if "train" in entry:
            outputs.append(f"results/{model}/training.json")
    outputs += figure_outputs(["paper", "extra"]) + rules_output("head_table")
    outputs += mechanism_outputs() + repair_outputs() + atp_outputs()
    outputs += expand("results/explorer/{model}.html", model=MODELS)
    outputs += text_set_outputs() + task_outputs()
    return outputs + ["results/explorer/index.html"]


def text_set_outputs():
    """The joint ablation of config ablation_sets on running text (set_ablate's stores): every
    model, each of `ablations`, every shard; none without sets."""
    if not config["ablation_sets"]:
        return []
    pattern = "results/{model}/sets/{ablation}/shard-{shard}.zarr"
    return expand(pattern, model=MODELS, ablation=ABLATIONS, shard=SHARDS)


def named_outputs(name):
    """The outputs of `all` that the named target `name` builds (Snakefile): every figure
    (pdf, png), every table (results/tables/ and the tasks' backup tables, csv and html), or
    every explorer page."""
    outputs = all_outputs() + training_outputs()
    return [path for path in outputs if sr_config.named_target_of(path) == name]


# --- who repairs whom -----------------------------------------------------------------------
# engine.attribution: the ablate jobs also sum every downstream component's change of direct
# effect over each head's top tokens (chosen once from the clean cache, rule head_top_tokens);
# rules/attribution.smk reduces them and keeps a few heads per token (REPAIR_HEADS, the picked
# figure heads and each model's most repaired ones) for the figures.
ATTRIBUTION = ENGINE["attribution"]
REPAIR = FIGURES["attribution"]
REPAIR_HEADS = sr_config.attribution_heads(
    config,
    MODELS,
    list(FIGURE_TARGETS.values()) + [t for ts in MECH_TARGETS.values() for t in ts],
)


REPAIR_BOOTSTRAP = {
    "n_resamples": FIGURES["bootstrap"]["resamples"],
    "level": FIGURES["bootstrap"]["level"],
    "seed": config["seed"],
}


def repair_paths(models, name):
    """Each model's repair store `name`: an ablation (summary) or detail-<ablation>."""
    return expand("results/{model}/attribution/{name}.zarr", model=models, name=name)


def top_tokens_input(wildcards):
    """The ablate rule's top-token store when it measures the attribution too or keeps only
    the top tokens (keep_params: of every kind of the job alike)."""
    key, shard = wildcards.model, int(wildcards.shard)
    every = sr_config.keeps_every_token(config, CHECKPOINTS, key, shard)
    if not ATTRIBUTION and every:
        return {}
    return {"top_tokens": f"results/{wildcards.model}/attribution/top_tokens.zarr"}


# engine.store_tokens: top keeps every token only of the heads whose per-token values figures
# and mechanisms read (Figs 3 and 5, the norms of Figs 4 and 16-18): configured, or picked
# from the clean direct effects (head_top_tokens) before any ablation.
PER_TOKEN_TARGETS = sr_config.per_token_targets(FIGURE_TARGETS, MECH_TARGETS)


def per_token_kept(wildcards):
    """(pick key, target) of the per-token targets that read the ablate job's store: of its
    model, reading its ablation variant (sr_config.per_token_ablations)."""
    return [
        (k, t)
        for k, t in PER_TOKEN_TARGETS
        if t.model == wildcards.model
        and wildcards.ablation in sr_config.per_token_ablations(config, k)
    ]


def per_token_picks(wildcards):
    """The pick records whose heads an ablate job keeps every token of (keep_params)."""
    if keep_params(wildcards) is None:
        return []
    return pick_paths(dict(per_token_kept(wildcards)))


def keep_params(wildcards):
    """The ablate job's `keep` (stages.ablation.ablate): None when it keeps every token
    (sr_config.keeps_every_token)."""
    model = wildcards.model
    if sr_config.keeps_every_token(config, CHECKPOINTS, model, int(wildcards.shard)):
        return None
    heads = {h for _, t in per_token_kept(wildcards) for h in t.heads}
    return {
        "n_tokens": N_PREDICTIONS,
        "n_resamples": FIGURES["bootstrap"]["resamples"],
        "seed": config["seed"],
        "heads": sorted(heads),
        "k": config["explorer"]["tokens_per_head"],
        "context": config["explorer"]["context"],
    }


def clean_top_k(wildcards):
    """The clean_cache job's `top_k` (stages.clean.clean_cache): under engine.store_tokens: top
    it keeps each head's best top_count tokens of the shard, the candidates of the model key's
    top tokens (head_top_tokens); None: every token (`all`)."""
    if ENGINE["store_tokens"] == "all":
        return None
    model = wildcards.model
    n_tokens = CHECKPOINT_TOKENS if model in CHECKPOINTS else N_PREDICTIONS
    return sr_config.top_count(n_tokens, ENGINE["top_fraction"])


def attribution_outputs(kinds=None):
    """The ablate rule's attribution stores (outputs only when engine.attribution is on): one
    per kind of `kinds`, or the {ablation} wildcard's (None: checkpoint_ablate's)."""
    if not ATTRIBUTION:
        return {}
    if kinds is None:
        path = "results/{model}/attribution/{ablation}/shard-{shard}.zarr"
        return {"attribution": directory(path)}
    path = "results/{{model}}/attribution/{ablation}/shard-{{shard}}.zarr"
    return {"attribution": kind_stores(path, kinds)}


# One ablate job per (model, shard) measures every ablation variant (VARIANTS) one after the
# other: its start-up, model and rows once. Its per-kind params are lists in VARIANTS' order,
# each as a job of that kind alone would have it (kind_wildcards).
def kind_wildcards(wildcards, ablation):
    """The wildcards of a one-kind job of this ablate job's model and shard."""
    return types.SimpleNamespace(
        model=wildcards.model, shard=wildcards.shard, ablation=ablation
    )


def per_kind(function):
    """Param function: `function`'s value for each variant, in VARIANTS' order."""
    return lambda w: [function(kind_wildcards(w, v)) for v in VARIANTS]


def all_kinds_picks(wildcards):
    """The pick records any kind of an ablate job keeps the heads of (its input)."""
    return sorted({p for picks in per_kind(per_token_picks)(wildcards) for p in picks})


def ablate_runtime(wildcards, attempt):
    """A model job's runtime (model_runtime) per kind it runs: rule ablate's every variant (a
    text shard without an {ablation} wildcard), its variants one kind each."""
    keys = wildcards.keys()
    kinds = len(VARIANTS) if "ablation" not in keys and "task" not in keys else 1
    return kinds * model_runtime(wildcards, attempt)


def repair_picks(wildcards):
    """The pick records of the figure and mechanism targets shown in this model."""
    return [pick_path(k, t) for k, t in PICKS.items() if t.model == wildcards.model]


def repair_outputs():
    """The who-repairs-whom stores, figures and table of the run (none when it is off)."""
    if not ATTRIBUTION:
        return []
    outputs = expand(
        "results/{model}/attribution/{ablation}.zarr", model=MODELS, ablation=VARIANTS
    )
    outputs += [f"results/{m}/attribution/detail-{FIG_ABLATION}.zarr" for m in MODELS]
    return outputs + figure_outputs(["repair"]) + rules_output("repair_graph")


# --- self-repair over training (rules/training.smk) ---------------------------------------------
# A model's training checkpoints are model keys of their own (CHECKPOINTS, above), measured by the
# clean and ablation rules on the first `checkpoint_shards` shards, under figures.ablation only.
# Per model with checkpoints: [(model key, step), ...], the model itself (final) last.
TRAINING = {
    m: steps for m, e in MODELS.items() if (steps := sr_config.checkpoint_steps(m, e))
}
CHECKPOINT_SHARDS = SHARDS[: config["checkpoint_shards"] or len(SHARDS)]
CHECKPOINT_TOKENS = sr_config.n_predictions(DATA, [int(s) for s in CHECKPOINT_SHARDS])


def training_checkpoints():
    """Per model, its checkpoints in step order: key, step and the stores the figure reads."""
    return {
        model: [
            {
                "key": key,
                "step": step,
                # the model itself (the last key) measures every shard: its first ones here
                "clean": shard_paths("clean", key)[: len(CHECKPOINT_SHARDS)],
                "ablation": shard_paths("ablation", key, FIG_ABLATION)[
                    : len(CHECKPOINT_SHARDS)
                ],
            }
            for key, step in steps
        ]
        for model, steps in TRAINING.items()
    }


def training_stores(kind):
    """Every checkpoint's stores of one kind ("clean" or "ablation") the figure reads."""
    ckpts = [c for cs in training_checkpoints().values() for c in cs]
    return [path for c in ckpts for path in c[kind]]


def training_caption():
    """The 'Measured' paragraph: the models, every checkpoint's step, the tokens."""
    steps = [
        f"{m} at steps {', '.join(f'{s:,}' for _, s in steps)} (the last: {m} itself)"
        for m, steps in TRAINING.items()
    ]
    return captions.measured(
        models=list(TRAINING) or ["none with checkpoints"],
        ablations=[FIG_ABLATION],
        n_tokens=CHECKPOINT_TOKENS,
        selection=captions.Selection(
            ENGINE["top_fraction"], CHECKPOINT_TOKENS
        ).describe(),
        extra=[
            f"Checkpoints: {'; '.join(steps)}",
            f"Every checkpoint on the same {CHECKPOINT_TOKENS:,} tokens "
            f"(the first {len(CHECKPOINT_SHARDS)} of {len(SHARDS)} token shards)",
        ],
    )


def training_outputs():
    """The training figures' files, when some model has checkpoints (rule all)."""
    return figure_outputs(["training"])


# --- attribution patching against the exact effects (rules/atp.smk) ------------------------------
# engine.atp: per (model, shard), AtP and GradDrop of every head (per row, and on each head's top
# tokens from rule head_top_tokens) under every ablation, a store per ablation from one job (its
# backward passes serve every kind), then reduced beside the exact effects of the same ablation;
# figures under the figures' ablation, the table under every ablation.
ATP = ENGINE["atp"]
# top_k is clipped per model to below the heads it measures (analysis.atp.top_k_used).
ATP_SETTINGS = config["figures"]["atp"]
ALL_TOO = (
    f"Also over all {N_PREDICTIONS:,} tokens, where AtP estimates each row's summed change "
    "(one backward pass per batch); on the top tokens, per row, the change of the sum of "
    "the head's top tokens in it (one backward pass per head)"
)


def atp_paths(models, ablation):
    return expand(
        "results/{model}/atp/{ablation}.zarr", model=models, ablation=ablation
    )


def atp_table_repairs(wildcards):
    """The repair summaries the table names repairers from (none without attribution)."""
    if not ATTRIBUTION:
        return []
    return [repair_paths([m], a)[0] for m in MODELS for a in ABLATIONS]


def atp_outputs():
    """The attribution-patching stores, figures and table of the run (none when it is off;
    a task's: task_outputs)."""
    if not ATP:
        return []
    outputs = expand(
        "results/{model}/atp/{ablation}.zarr", model=MODELS, ablation=ABLATIONS
    )
    return outputs + figure_outputs(["atp"]) + rules_output("atp_table")


def kind_stores(pattern, kinds):
    """A job's stores, one per kind (pattern's {ablation}; its other wildcards kept): atp's
    and ablate's."""
    return [directory(path) for path in expand(pattern, ablation=kinds)]


def regex_of(names):
    """A wildcard constraint matching exactly these names (none: nothing)."""
    return "|".join(re.escape(n) for n in names) or "(?!)"


# One task_atp job per (model, task) writes the store of each of the task's ablations. A rule's
# outputs cannot depend on a wildcard, so task_atp serves the tasks whose ablations are the most
# common list (every shipped config's: one list), task_atp_per_kind any other, one job per kind.
_TASK_KIND_LISTS = collections.Counter(tuple(t["ablations"]) for t in TASKS.values())
TASK_ATP_KINDS = list(max(_TASK_KIND_LISTS, key=_TASK_KIND_LISTS.get, default=()))
TASK_ATP_SHARED = [
    t for t, s in TASKS.items() if list(s["ablations"]) == TASK_ATP_KINDS
]
TASK_ATP_ALONE = [t for t in TASKS if t not in TASK_ATP_SHARED]


def task_atp_summaries(wildcards):
    """A (model, task)'s AtP summaries, one per ablation of the task, the first's first."""
    return task_paths(wildcards, "atp/summary-{a}.zarr")


# --- tasks (rules/tasks.smk) ---------------------------------------------------------------------
# Per model and task, results/{model}/tasks/{task}/; the figures and the backup table show the
# task's first ablation.
TASK_FIGURES = sr_figures.TASK_FIGURES


# --- datasets: a rule with the {dataset} wildcard serves running text ("") and each task
# ("tasks/<task>/", one shard, sr_config.TASK_SHARD); what differs are its settings, these.
def dataset_task(wildcards):
    """The task the job's {dataset} names (None: running text)."""
    task = sr_config.dataset_task(wildcards.dataset)
    if task is not None and wildcards.shard != sr_config.TASK_SHARD:
        raise ValueError(
            f"a task is one shard, {sr_config.TASK_SHARD}: not {wildcards.shard}"
        )
    return task


def on_dataset(text, task):
    """A setting of the job's dataset: `text` on running text, `task` on a task, each a value
    or a function of the wildcards."""

    def setting(wildcards):
        value = task if dataset_task(wildcards) else text
        return value(wildcards) if callable(value) else value

    return setting


def dataset_tokens(wildcards):
    """A dataset's rows: the model's token shards, or the task's prompts."""
    rows = "prompts" if dataset_task(wildcards) else "tokens"
    return f"results/{wildcards.model}/{wildcards.dataset}{rows}.zarr"


def dataset_metric(wildcards):
    """The task's metric (correct_logit, logit_diff); None on running text."""
    task = dataset_task(wildcards)
    return TASKS[task]["metric"] if task else None


def dataset_attrs(wildcards):
    """Provenance of a dataset's stores: run_attrs and the shard, or task_attrs."""
    task = dataset_task(wildcards)
    if task:
        return attrs_of_task(wildcards, task)
    return run_attrs(wildcards) | {"shard": wildcards.shard}


def task_store(wildcards, kind):
    """A task's store of one kind in the text layout (kind/shard-<TASK_SHARD>.zarr)."""
    return f"{task_dir(wildcards)}/{kind}/shard-{sr_config.TASK_SHARD}.zarr"


def task_dir(wildcards):
    return f"results/{wildcards.model}/tasks/{wildcards.task}"


def task_figure_ablation(wildcards):
    return TASKS[wildcards.task]["ablations"][0]


def method_atp_input(wildcards):
    """The task's AtP store under the methods' ablation (engine.atp on): AtP*'s GradDrop joins
    the method table."""
    if not ATP:
        return {}
    return {
        "atp": f"results/{wildcards.model}/tasks/{wildcards.task}/atp/"
        f"{task_figure_ablation(wildcards)}.zarr"
    }


def picked_sets_input(wildcards):
    """What the task's clean pass wrote that one of its sets (the method set's, under
    task_methods) is picked from at run time: metric.json for its induction scores
    ({induction_score_top: k}), the clean store for its direct effects ({direct_effect_top: k}).
    """
    sets = TASKS[wildcards.task]["ablation_sets"]
    if "ablation_set" in wildcards.keys():
        sets = {wildcards.ablation_set: sets[wildcards.ablation_set]}
    picks = {by for heads in sets.values() if isinstance(heads, dict) for by in heads}
    files = {"induction_score_top": ("metric", f"{task_dir(wildcards)}/metric.json")}
    files["direct_effect_top"] = ("clean", task_store(wildcards, "clean"))
    return dict(files[by] for by in picks)


def attrs_of_task(wildcards, task):
    """Provenance of a task's stores: the model's, and the task's name and config entry."""
    return run_attrs(wildcards) | {"task": task, "task_spec": TASKS[task]}


def task_attrs(wildcards):
    """attrs_of_task of the job's {task}."""
    return attrs_of_task(wildcards, wildcards.task)


def task_paths(wildcards, pattern):
    """A (model, task)'s stores of one kind, one per ablation of the task (pattern's {a})."""
    return [
        f"{task_dir(wildcards)}/{pattern.format(a=a)}"
        for a in TASKS[wildcards.task]["ablations"]
    ]


def task_figure_input(wildcards):
    """The stores a task's figures and backup table read (its first ablation's)."""
    where, ablation = task_dir(wildcards), task_figure_ablation(wildcards)
    return {
        "summary": f"{where}/summary/{ablation}.zarr",
        "intervals": f"{where}/intervals/{ablation}.zarr",
        "repairs": f"{where}/attribution/{ablation}.zarr",
        "detail": f"{where}/attribution/detail-{ablation}.zarr",
        "metric": f"{where}/metric.json",
    }


def task_view(wildcards, input):
    """A task figure's `task` param: its task, ablation (the first) and clean metric JSON."""
    return {
        "task": wildcards.task,
        "ablation": task_figure_ablation(wildcards),
        "metric": input.metric,
    }


def task_sets_input(wildcards):
    """The joint ablation of the task's sets under its first ablation, if it names any."""
    if not TASKS[wildcards.task]["ablation_sets"]:
        return []
    return [f"{task_dir(wildcards)}/sets/{task_figure_ablation(wildcards)}.zarr"]


def task_caption(wildcards, input):
    """The 'Measured' paragraph of a task's figure or table: model, ablation, the answers, the
    task and its metric, and the clean model on it (task_metric's JSON, checked, once it
    exists).
    """
    return measured_on_task(wildcards, input, [task_figure_ablation(wildcards)])


def task_table_caption(wildcards, input):
    """task_caption for the per-head table: every ablation of the task."""
    return measured_on_task(wildcards, input, TASKS[wildcards.task]["ablations"])


def task_ablation_note(ablation):
    """A task ablation's caption note: its kind's, and the frozen LayerNorm if so."""
    kind, frozen = sr_config.parse_ablation(ablation)
    frozen_note = ", every later LayerNorm frozen at its clean scale" if frozen else ""
    return captions.ABLATION_NOTES[kind] + frozen_note


def measured_on_task(wildcards, input, ablations):
    spec = TASKS[wildcards.task]
    path = Path(input.metric)
    if path.exists():
        numbers = sr_records.read_json(path)
        baseline = (
            "the first copy of the same tokens" if spec["type"] == "induction" else ""
        )
        clean = captions.metric_sentence(numbers, baseline)
        n_answers, n_prompts = numbers["n_answers"], numbers["n_prompts"]
    else:  # a dry run's DAG: the numbers come when the job runs
        clean, n_answers, n_prompts = (
            "Clean metric: measured when the workflow runs",
            0,
            0,
        )
    return captions.measured(
        models=[f"{wildcards.model} on task {wildcards.task}"],
        ablations=[task_ablation_note(a) for a in ablations],
        n_tokens=n_answers,
        selection=f"every answer position ({n_answers:,} answers of {n_prompts:,} prompts)",
        extra=[
            captions.task_description(spec),
            f"Metric: {METRIC_LABELS[spec['metric']]}",
            clean,
        ],
    )


def task_outputs():
    """Every (model, task)'s final outputs, as the task rules write them: summaries, joint
    ablations of its sets, the per-head and backup tables, the figures and the explorer page,
    and with engine.atp its AtP table and figures (rules/atp.smk).
    """
    outputs = []
    for task, models in TASK_MODELS.items():
        spec = TASKS[task]
        each = dict(model=models, task=task, task_ablation=spec["ablations"])
        outputs += expand(rules.task_summary.output, **each)
        if spec["ablation_sets"]:  # joint sets run without frozen LayerNorm
            kinds = [a for a in spec["ablations"] if not sr_config.parse_ablation(a)[1]]
            outputs += expand(
                rules.task_set_ablate.output, **each | {"task_ablation": kinds}
            )
        if spec["ablation_sets"] and spec["expected_backups"]:
            sets = dict(
                model=models, task=task, ablation_set=list(spec["ablation_sets"])
            )
            outputs += expand(rules.method_table.output, **sets)
        for name in ("task_head_table", "task_backups", *TASK_FIGURES, "task_explorer"):
            outputs += expand(getattr(rules, name).output, model=models, task=task)
        for name in ("task_atp_table", "task_atp_scatter", "task_atp_error") * ATP:
            outputs += expand(getattr(rules, name).output, model=models, task=task)
    for seeded, (first, *_) in SEEDED_TASKS.items():
        spec = TASKS[first]
        if spec["ablation_sets"] and spec["expected_backups"]:
            outputs += expand(
                rules.method_seeds.output,
                model=TASK_MODELS[first],
                seeded_task=seeded,
                ablation_set=list(spec["ablation_sets"]),
            )
    return outputs


def method_seed_tables(wildcards):
    """The method tables of a task's prompt seeds (rule method_seeds), in the seeds' order."""
    return [
        f"results/{wildcards.model}/tasks/{task}/tables/methods-{wildcards.ablation_set}.csv"
        for task in SEEDED_TASKS[wildcards.seeded_task]
    ]


def explorer_pages():
    """(label, page) of every explorer page, for the index: each model's on running text, then
    each (model, task)'s."""
    return [(model, f"results/explorer/{model}.html") for model in MODELS] + [
        (f"{model} on task {task}", f"results/explorer/tasks/{task}/{model}.html")
        for task, models in TASK_MODELS.items()
        for model in models
    ]
