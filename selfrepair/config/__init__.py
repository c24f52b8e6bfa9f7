"""The run's configuration, checked before any job: schema errors in one line naming the key
(errors), model entries and their sizes (models), the row/shard layout (layout), figure and
mechanism targets with substitutes (targets, picks, mechanisms), parse-time and start-time checks
(checks, hub, memory, places), cluster resources (cluster), training checkpoints as model keys of
their own (checkpoints), and the workflow's entry (run: validate_run, check_before_jobs).

Light on purpose: the Snakefile is parsed by every job and the figure scripts run in an
environment without torch, jsonschema or transformer_lens, so no module here imports them at
import time. `import selfrepair.config as sr_config` gives the names the rules, the stages and
users need (below); everything else is imported from its module (selfrepair.config.models, ...).
"""

from selfrepair.config.attribution import attribution_heads
from selfrepair.config.checkpoints import (
    CHECKPOINT_DIR,
    checkpoint_models,
    checkpoint_steps,
    keeps_every_token,
)
from selfrepair.config.checks import check_run
from selfrepair.config.cli import (
    named_target_of,
    readable_params,
    report_config_problem,
    substitute_announcements,
    type_config_overrides,
)
from selfrepair.config.cluster import (
    mem_mb_for_attempt,
    model_resources,
    runtime_for_attempt,
)
from selfrepair.config.errors import (
    ConfigError,
    describe_validation_error,
    validation_error_from,
)
from selfrepair.config.hub import (
    check_hub_access,
    hub_needs,
)
from selfrepair.config.layout import (
    MAX_SHARDS,
    TASK_SHARD,
    ablation_variant,
    ablation_variants,
    dataset_of,
    dataset_task,
    job_task,
    n_predictions,
    n_rows,
    n_shards,
    parse_ablation,
    shard_bounds,
    top_count,
)
from selfrepair.config.mechanisms import (
    heads_by_model,
    mechanism_targets,
    per_token_ablations,
    per_token_targets,
    pick_targets,
)
from selfrepair.config.models import (
    Head,
    check_hub_names,
    check_model_entry,
    device_problem,
    missing_head,
    model_dims,
    model_entries,
    official_model_name,
    parallel_blocks,
    pickled_weights_message,
    pickled_weights_problem,
    rms_gated_activation,
    text_models,
)
from selfrepair.config.picks import (
    candidate_layers,
    pick_spec,
)
from selfrepair.config.run import (
    SCHEMA,
    check_before_jobs,
    check_planned_outputs,
    merged_config,
    validate_run,
)
from selfrepair.config.storage import estimate_storage, top_ablation_bytes
from selfrepair.config.storage_check import check_storage, storage_table
from selfrepair.config.targets import (
    FigureTarget,
    check_target_heads,
    figure_ablation,
    figure_target,
    figure_targets,
    frozen_ln_ablation,
    other_models,
    target_with_pick,
)
from selfrepair.config.tasks import model_context, task_models
from selfrepair.config.time_estimate import check_time, jobs_on_cpu

__all__ = [
    "named_target_of",
    "readable_params",
    "report_config_problem",
    "substitute_announcements",
    "type_config_overrides",
    "CHECKPOINT_DIR",
    "MAX_SHARDS",
    "SCHEMA",
    "TASK_SHARD",
    "ConfigError",
    "FigureTarget",
    "Head",
    "attribution_heads",
    "candidate_layers",
    "check_before_jobs",
    "checkpoint_models",
    "keeps_every_token",
    "checkpoint_steps",
    "check_planned_outputs",
    "check_hub_access",
    "check_hub_names",
    "check_model_entry",
    "check_run",
    "ablation_variant",
    "ablation_variants",
    "check_storage",
    "check_time",
    "dataset_of",
    "dataset_task",
    "job_task",
    "jobs_on_cpu",
    "check_target_heads",
    "describe_validation_error",
    "device_problem",
    "estimate_storage",
    "figure_ablation",
    "figure_target",
    "figure_targets",
    "frozen_ln_ablation",
    "heads_by_model",
    "hub_needs",
    "mechanism_targets",
    "mem_mb_for_attempt",
    "missing_head",
    "model_dims",
    "model_entries",
    "model_resources",
    "n_predictions",
    "n_rows",
    "n_shards",
    "official_model_name",
    "other_models",
    "parallel_blocks",
    "pickled_weights_message",
    "pickled_weights_problem",
    "parse_ablation",
    "pick_spec",
    "per_token_ablations",
    "per_token_targets",
    "pick_targets",
    "rms_gated_activation",
    "runtime_for_attempt",
    "shard_bounds",
    "storage_table",
    "target_with_pick",
    "model_context",
    "task_models",
    "text_models",
    "top_ablation_bytes",
    "top_count",
    "merged_config",
    "validate_run",
    "validation_error_from",
]
