# The clean pass of one token shard; on a task's prompts the same rule and stage function
# (`use rule clean_cache as task_clean with:`, rules/tasks.smk).


rule clean_cache:
    input:
        unpack(model_job_input),
        tokens="results/{model}/tokens.zarr",
    output:
        clean=directory("results/{model}/clean/shard-{shard}.zarr"),
    log:
        "results/logs/clean_cache/{model}/shard-{shard}.log",
    benchmark:
        "results/benchmarks/clean_cache/{model}/shard-{shard}.tsv"
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
        top_k=clean_top_k,
        task=None,
        metric=None,
        device=config["device"],
        dtype=config["dtype"],
        attrs=lambda w: run_attrs(w) | {"shard": w.shard},
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
