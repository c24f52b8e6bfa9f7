# The mechanism experiments (paper sections on LayerNorm, anti-erasure neurons and
# self-reinforcement): each runs per model on the union of its figures' heads (NEURON_HEADS,
# NORM_HEADS, REINFORCEMENT_HEADS in rules/common.smk). Their figures are in rules/figures.smk.


# neuron_effects reduces its neurons itself (reductions.zarr, what Figs 7, 8 and 15 read);
# selected.zarr keeps the per-neuron arrays only under engine.store_tokens: all (1 GB per head
# at the paper's size). store_tokens is a param, not in run_attrs: switching it reruns the job.
rule neuron_effects:
    input:
        unpack(model_job_input),
        tokens="results/{model}/tokens.zarr",
        picks=lambda w: mech_picks(("fig07", "fig08", "fig15"), w.model),
    output:
        selected=directory("results/{model}/neurons/selected.zarr"),
        reductions=directory("results/{model}/neurons/reductions.zarr"),
    log:
        "results/logs/neuron_effects/{model}.log",
    benchmark:
        "results/benchmarks/neuron_effects/{model}.tsv"
    conda:
        "../../envs/engine.yaml"
    threads: model_threads
    resources:
        mem_mb=model_mem_mb,
        runtime=model_runtime,
    params:
        model=model_entry,
        bounds=SHARD_BOUNDS,
        heads=lambda w: NEURON_HEADS[w.model],
        mlp_layer=MECH["neurons"]["mlp_layer"],
        ablation=MECH["neurons"]["ablation"],
        top_fraction=ENGINE["top_fraction"],
        thresholds=MECH["neurons"]["thresholds"],
        top_n=MECH["neurons"]["top_n"],
        store_tokens=ENGINE["store_tokens"],
        batch_size=batch_size,
        mean_include_bos=ENGINE["mean_include_bos"],
        device=config["device"],
        dtype=config["dtype"],
        attrs=run_attrs,
    script:
        "../scripts/neuron_effects.py"


rule norm_ratios:
    input:
        unpack(model_job_input),
        tokens="results/{model}/tokens.zarr",
        shards=shards_of("ablation"),
        picks=lambda w: mech_picks(("fig04", "fig16_18"), w.model),
    output:
        norms=directory("results/{model}/norms/{ablation}.zarr"),
    log:
        "results/logs/norm_ratios/{model}/{ablation}.log",
    benchmark:
        "results/benchmarks/norm_ratios/{model}/{ablation}.tsv"
    wildcard_constraints:
        ablation="|".join(ABLATIONS),
    conda:
        "../../envs/engine.yaml"
    threads: model_threads
    resources:
        mem_mb=model_mem_mb,
        runtime=model_runtime,
    params:
        model=model_entry,
        bounds=SHARD_BOUNDS,
        heads=lambda w: NORM_HEADS[w.model],
        top_fraction=ENGINE["top_fraction"],
        batch_size=batch_size,
        mean_include_bos=ENGINE["mean_include_bos"],
        device=config["device"],
        dtype=config["dtype"],
        attrs=run_attrs,
    script:
        "../scripts/norm_ratios.py"


rule self_reinforcement:
    input:
        unpack(model_job_input),
        tokens="results/{model}/tokens.zarr",
    output:
        reinforcement=directory("results/{model}/reinforcement/reinforcement.zarr"),
    log:
        "results/logs/self_reinforcement/{model}.log",
    benchmark:
        "results/benchmarks/self_reinforcement/{model}.tsv"
    conda:
        "../../envs/engine.yaml"
    threads: model_threads
    resources:
        mem_mb=model_mem_mb,
        runtime=model_runtime,
    params:
        model=model_entry,
        heads=lambda w: REINFORCEMENT_HEADS[w.model],
        second_half=MECH["reinforcement"]["second_half"],
        scales=MECH["reinforcement"]["scales"],
        rows=MECH["reinforcement"]["rows"],
        seq_len=MECH["reinforcement"]["seq_len"],
        batch_size=batch_size,
        device=config["device"],
        dtype=config["dtype"],
        attrs=run_attrs,
    script:
        "../scripts/self_reinforcement.py"
