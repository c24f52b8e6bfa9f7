# Every head of one token shard under one ablation; on a task's prompts the same rule and stage
# function (`use rule ablate as task_ablate with:`, rules/tasks.smk).


rule ablate:
    input:
        unpack(model_job_input),
        unpack(top_tokens_input),
        tokens="results/{model}/tokens.zarr",
        picks=per_token_picks,
    output:
        **attribution_outputs(),
        heads=directory("results/{model}/ablation/{ablation}/shard-{shard}.zarr"),
    log:
        "results/logs/ablate/{model}/{ablation}/shard-{shard}.log",
    benchmark:
        "results/benchmarks/ablate/{model}/{ablation}/shard-{shard}.tsv"
    conda:
        "../../envs/engine.yaml"
    threads: model_threads
    resources:
        mem_mb=model_mem_mb,
        runtime=model_runtime,
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
        task=None,
        metric=None,
        attrs=lambda w: run_attrs(w) | {"shard": w.shard},
    script:
        "../scripts/ablate.py"
