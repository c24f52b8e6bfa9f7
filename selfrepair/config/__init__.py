"""The run's configuration, checked before any job: schema errors in one line naming the key
(errors), model entries and their sizes (models), the row/shard layout (layout), figure and
mechanism targets with substitutes (targets, picks, mechanisms), parse-time and start-time checks
(checks, hub), cluster resources (cluster), training checkpoints as model keys of their own
(checkpoints), and the workflow's entry (run: validate_run, check_before_jobs).

Light on purpose: the Snakefile is parsed by every job and the figure scripts run in an
environment without torch, jsonschema or transformer_lens, so no module here imports them at
import time. `import selfrepair.config as sr_config` gives every public name below.
"""

from selfrepair.config.attribution import attribution_heads
from selfrepair.config.checks import (
    check_corpus_files,
    check_distinct_heads,
    check_frozen_ln,
    check_machine,
    check_run,
)
from selfrepair.config.cluster import (
    RESOURCE_KEYS,
    mem_mb_for_attempt,
    model_resources,
    runtime_for_attempt,
)
from selfrepair.config.errors import (
    ConfigError,
    describe_validation_error,
    key_path,
    validation_error_from,
)
from selfrepair.config.hub import (
    PROXY_VARIABLES,
    WEIGHT_SUFFIXES,
    check_hub_access,
    dataset_cached,
    hub_needs,
    hub_reachable,
    model_cached,
)
from selfrepair.config.layout import (
    FROZEN_LN_SUFFIX,
    MAX_SHARDS,
    MIN_TOP_TOKENS,
    check_shard_count,
    check_top_tokens,
    n_predictions,
    n_rows,
    n_shards,
    parse_ablation,
    shard_bounds,
    top_count,
)
from selfrepair.config.mechanisms import (
    TARGET_KEYS,
    caption_label,
    check_picks,
    check_reinforcement_rows,
    heads_by_model,
    mechanism_targets,
    pick_targets,
)
from selfrepair.config.models import (
    HEAD_KEYS,
    KNOWN_DIMS,
    LAYER_KEYS,
    LOCAL_ARCHITECTURES,
    NON_CAUSAL_TYPES,
    PARALLEL_TYPES,
    RMS_GATED_TYPES,
    Head,
    architecture_problem,
    check_device_dtype,
    check_hub_names,
    check_model_entry,
    device_problem,
    missing_head,
    model_dims,
    model_entries,
    official_model_name,
    parallel_blocks,
    rms_gated_activation,
)
from selfrepair.config.picks import (
    PICK_CRITERIA,
    PICKABLE,
    candidate_layers,
    pick_spec,
)
from selfrepair.config.run import (
    SCHEMA,
    check_before_jobs,
    validate_run,
)
from selfrepair.config.targets import (
    FigureTarget,
    as_heads,
    check_distinct_targets,
    check_target_heads,
    figure_ablation,
    figure_target,
    figure_targets,
    frozen_ln_ablation,
    other_models,
    resolve_target,
    target_problem,
    target_with_pick,
)

__all__ = [
    "FROZEN_LN_SUFFIX",
    "HEAD_KEYS",
    "KNOWN_DIMS",
    "LAYER_KEYS",
    "LOCAL_ARCHITECTURES",
    "MAX_SHARDS",
    "MIN_TOP_TOKENS",
    "NON_CAUSAL_TYPES",
    "PARALLEL_TYPES",
    "PICKABLE",
    "PICK_CRITERIA",
    "PROXY_VARIABLES",
    "RESOURCE_KEYS",
    "RMS_GATED_TYPES",
    "SCHEMA",
    "TARGET_KEYS",
    "WEIGHT_SUFFIXES",
    "ConfigError",
    "FigureTarget",
    "Head",
    "architecture_problem",
    "as_heads",
    "attribution_heads",
    "candidate_layers",
    "caption_label",
    "check_before_jobs",
    "check_corpus_files",
    "check_device_dtype",
    "check_distinct_heads",
    "check_distinct_targets",
    "check_frozen_ln",
    "check_hub_access",
    "check_hub_names",
    "check_machine",
    "check_model_entry",
    "check_picks",
    "check_reinforcement_rows",
    "check_run",
    "check_shard_count",
    "check_target_heads",
    "check_top_tokens",
    "dataset_cached",
    "describe_validation_error",
    "device_problem",
    "figure_ablation",
    "figure_target",
    "figure_targets",
    "frozen_ln_ablation",
    "heads_by_model",
    "hub_needs",
    "hub_reachable",
    "key_path",
    "mechanism_targets",
    "mem_mb_for_attempt",
    "missing_head",
    "model_cached",
    "model_dims",
    "model_entries",
    "model_resources",
    "n_predictions",
    "n_rows",
    "n_shards",
    "official_model_name",
    "other_models",
    "parallel_blocks",
    "parse_ablation",
    "pick_spec",
    "pick_targets",
    "resolve_target",
    "rms_gated_activation",
    "runtime_for_attempt",
    "shard_bounds",
    "target_problem",
    "target_with_pick",
    "top_count",
    "validate_run",
    "validation_error_from",
]

# --- training checkpoints (issue 15) -----------------------------------------------------------
from selfrepair.config.checkpoints import (  # noqa: E402
    CHECKPOINT_DIR,
    PYTHIA_FINAL_STEP,
    PYTHIA_STEPS,
    check_checkpoints,
    checkpoint_key,
    checkpoint_models,
    checkpoint_steps,
    final_step,
    model_checkpoints,
)

__all__ += [
    "CHECKPOINT_DIR",
    "PYTHIA_FINAL_STEP",
    "PYTHIA_STEPS",
    "check_checkpoints",
    "checkpoint_key",
    "checkpoint_models",
    "checkpoint_steps",
    "final_step",
    "model_checkpoints",
]
