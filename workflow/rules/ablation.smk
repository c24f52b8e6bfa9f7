rule ablate:
    input:
        unpack(model_input),
        tokens="results/{model}/tokens.zarr",
    output:
        heads=directory("results/{model}/ablation/{ablation}/shard-{shard}.zarr"),
    log:
        "results/logs/ablate/{model}/{ablation}/shard-{shard}.log",
    benchmark:
        "results/benchmarks/ablate/{model}/{ablation}/shard-{shard}.tsv"
    conda:
        "../../envs/engine.yaml"
    threads: workflow.cores
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
        attrs=run_attrs,
    script:
        "../scripts/ablate.py"


rule summarize_heads:
    input:
        shards=ablation_shards,
    output:
        summary=directory("results/{model}/summary/{ablation}.zarr"),
    log:
        "results/logs/summarize_heads/{model}/{ablation}.log",
    benchmark:
        "results/benchmarks/summarize_heads/{model}/{ablation}.tsv"
    conda:
        "../../envs/analysis.yaml"
    params:
        top_fraction=ENGINE["top_fraction"],
        de_epsilon=ENGINE["de_epsilon"],
        attrs=run_attrs,
    script:
        "../scripts/summarize_heads.py"
