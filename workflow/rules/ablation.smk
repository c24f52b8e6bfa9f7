# Every head of one token shard under every ablation variant of the run, one job per (model,
# shard): the start-up, the model and the rows once, then each kind as a job of that kind alone
# (stages.ablation.ablate; per-kind params: per_kind, common.smk). A training checkpoint's shard
# runs under figures.ablation only (checkpoint_ablate), a task's prompts under each of the task's
# ablations (`use rule ablate as task_ablate with:`, rules/tasks.smk): the same stage function.


rule ablate:
    input:
        unpack(model_job_input),
        unpack(top_tokens_input),
        tokens="results/{model}/tokens.zarr",
        picks=all_kinds_picks,
    output:
        **attribution_outputs(VARIANTS),
        heads=kind_stores(
            "results/{{model}}/ablation/{ablation}/shard-{{shard}}.zarr", VARIANTS
        ),
    log:
        "results/logs/ablate/{model}/shard-{shard}.log",
    benchmark:
        "results/benchmarks/ablate/{model}/shard-{shard}.tsv"
    wildcard_constraints:
        model=regex_of(MODELS),
    conda:
        "../../envs/engine.yaml"
    threads: model_threads
    resources:
        mem_mb=model_mem_mb,
        runtime=ablate_runtime,
    params:
        model=model_entry,
        bounds=shard_bounds,
        batch_size=batch_size,
        heads_per_pass=ENGINE["heads_per_pass"],
        mean_include_bos=ENGINE["mean_include_bos"],
        ablation=[sr_config.parse_ablation(v)[0] for v in VARIANTS],
        freeze_ln=[sr_config.parse_ablation(v)[1] for v in VARIANTS],
        device=config["device"],
        dtype=config["dtype"],
        keep=per_kind(keep_params),
        picks=per_kind(per_token_picks),
        task=None,
        metric=None,
        attrs=lambda w: run_attrs(w) | {"shard": w.shard},
    script:
        "../scripts/ablate.py"


use rule ablate as checkpoint_ablate with:
    input:
        unpack(model_job_input),
        unpack(top_tokens_input),
        tokens="results/{model}/tokens.zarr",
        picks=per_token_picks,
    output:
        **attribution_outputs(),
        heads=directory("results/{model}/ablation/{ablation}/shard-{shard}.zarr"),
    log:
        "results/logs/checkpoint_ablate/{model}/{ablation}/shard-{shard}.log",
    benchmark:
        "results/benchmarks/checkpoint_ablate/{model}/{ablation}/shard-{shard}.tsv"
    wildcard_constraints:
        model=regex_of(CHECKPOINTS),
    params:
        model=model_entry,
        bounds=shard_bounds,
        batch_size=batch_size,
        heads_per_pass=ENGINE["heads_per_pass"],
        mean_include_bos=ENGINE["mean_include_bos"],
        ablation=lambda w: sr_config.parse_ablation(w.ablation)[0],
        freeze_ln=lambda w: sr_config.parse_ablation(w.ablation)[1],
        device=config["device"],
        dtype=config["dtype"],
        keep=keep_params,
        picks=per_token_picks,
        task=None,
        metric=None,
        attrs=lambda w: run_attrs(w) | {"shard": w.shard},
