# The clean pass of one dataset's shard: a token shard of running text, or a task's prompts
# (one shard, under results/{model}/tasks/<task>/; its answers and metric, its clean metric
# written as JSON by task_metric, rules/tasks.smk). The settings of a dataset are functions of
# {dataset} (common.smk: on_dataset).


rule clean_cache:
    input:
        unpack(model_job_input),
        tokens=dataset_tokens,
    output:
        clean=directory("results/{model}/{dataset}clean/shard-{shard}.zarr"),
    log:
        "results/logs/clean_cache/{model}/{dataset}shard-{shard}.log",
    benchmark:
        "results/benchmarks/clean_cache/{model}/{dataset}shard-{shard}.tsv"
    conda:
        "../../envs/engine.yaml"
    threads: model_threads
    resources:
        mem_mb=model_mem_mb,
        runtime=model_runtime,
    params:
        model=model_entry,
        bounds=on_dataset(shard_bounds, None),  # a task: every prompt
        batch_size=batch_size,
        top_k=on_dataset(clean_top_k, None),  # a task: every answer
        task=dataset_task,
        metric=dataset_metric,
        device=config["device"],
        dtype=config["dtype"],
        attrs=dataset_attrs,
    script:
        "../scripts/clean_cache.py"


# Once per model: the model and its training checkpoints loaded through TransformerLens and
# processed, their weights written for the model jobs, which then need not import TransformerLens.
rule process_weights:
    input:
        unpack(process_weights_input),
    output:
        weights=directory("resources/weights/{model}"),
    log:
        "results/logs/process_weights/{model}.log",
    benchmark:
        "results/benchmarks/process_weights/{model}.tsv"
    conda:
        "../../envs/engine.yaml"
    threads: model_threads
    resources:
        mem_mb=model_mem_mb,
        runtime=model_runtime,
    params:
        model=model_entry,
        checkpoints=lambda w: [ENTRIES[k] for k in checkpoints_of(w.model)],
        checkpoint_dirs=lambda w: [checkpoint_path(k) for k in checkpoints_of(w.model)],
    script:
        "../scripts/process_weights.py"
