# Who repairs whom (beyond the paper; engine.attribution): each head's top tokens from the clean
# cache before any ablation, the ablate jobs' per-shard sums reduced per (head, component), a few
# heads kept per token, and the figures and table drawn from them.


rule head_top_tokens:
    input:
        shards=shards_of("clean"),
    output:
        top_tokens=directory("results/{model}/attribution/top_tokens.zarr"),
    log:
        "results/logs/head_top_tokens/{model}.log",
    benchmark:
        "results/benchmarks/head_top_tokens/{model}.tsv"
    conda:
        "../../envs/analysis.yaml"
    params:
        top_fraction=ENGINE["top_fraction"],
        model=model_entry,
        attrs=run_attrs,
    script:
        "../scripts/head_top_tokens.py"


rule repair_summary:
    input:
        shards=shards_of("attribution"),
        top_tokens="results/{model}/attribution/top_tokens.zarr",
    output:
        summary=directory("results/{model}/attribution/{ablation}.zarr"),
    log:
        "results/logs/repair_summary/{model}/{ablation}.log",
    benchmark:
        "results/benchmarks/repair_summary/{model}/{ablation}.tsv"
    conda:
        "../../envs/analysis.yaml"
    params:
        attrs=run_attrs,
    script:
        "../scripts/repair_summary.py"


rule repair_detail:
    input:
        unpack(model_job_input),
        tokens="results/{model}/tokens.zarr",
        top_tokens="results/{model}/attribution/top_tokens.zarr",
        summary="results/{model}/attribution/{ablation}.zarr",
        picks=repair_picks,
    output:
        detail=directory("results/{model}/attribution/detail-{ablation}.zarr"),
    log:
        "results/logs/repair_detail/{model}/{ablation}.log",
    benchmark:
        "results/benchmarks/repair_detail/{model}/{ablation}.tsv"
    conda:
        "../../envs/engine.yaml"
    threads: model_threads
    resources:
        mem_mb=model_mem_mb,
        runtime=model_runtime,
    params:
        model=model_entry,
        bounds=SHARD_BOUNDS,
        heads=lambda w: REPAIR_HEADS[w.model],
        most_repaired=REPAIR["most_repaired"],
        ablation=lambda w: sr_config.parse_ablation(w.ablation)[0],
        freeze_ln=lambda w: sr_config.parse_ablation(w.ablation)[1],
        batch_size=batch_size,
        heads_per_pass=ENGINE["heads_per_pass"],
        mean_include_bos=ENGINE["mean_include_bos"],
        device=config["device"],
        dtype=config["dtype"],
        attrs=run_attrs,
    script:
        "../scripts/repair_detail.py"


# --- figures and table (the figures' ablation; made when engine.attribution is on) -----------


rule repair_heatmap:
    input:
        summaries=repair_paths(list(MODELS), FIG_ABLATION),
    output:
        pdf="results/figures/repair_heatmap.pdf",
        png=report(
            "results/figures/repair_heatmap.png",
            caption="../report/repair_heatmap.rst",
            category="Beyond the paper – who repairs whom",
            subcategory="all models",
        ),
    log:
        "results/logs/figures/repair_heatmap.log",
    benchmark:
        "results/benchmarks/figures/repair_heatmap.tsv"
    conda:
        "../../envs/analysis.yaml"
    params:
        models=list(MODELS),
        top_fraction=ENGINE["top_fraction"],
        caption=figure_caption(list(MODELS), [FIG_ABLATION], TOP_SELECTION),
    script:
        "../scripts/repair_heatmap.py"


rule repair_bars:
    input:
        summaries=repair_paths(list(MODELS), FIG_ABLATION),
        details=repair_paths(list(MODELS), f"detail-{FIG_ABLATION}"),
    output:
        pdf="results/figures/repair_top_repairers.pdf",
        png=report(
            "results/figures/repair_top_repairers.png",
            caption="../report/repair_bars.rst",
            category="Beyond the paper – who repairs whom",
            subcategory="all models",
        ),
    log:
        "results/logs/figures/repair_bars.log",
    benchmark:
        "results/benchmarks/figures/repair_bars.tsv"
    conda:
        "../../envs/analysis.yaml"
    params:
        models=list(MODELS),
        most_repaired=REPAIR["most_repaired"],
        repairers=REPAIR["repairers"],
        bootstrap=REPAIR_BOOTSTRAP,
        top_fraction=ENGINE["top_fraction"],
        caption=figure_caption(
            list(MODELS), [FIG_ABLATION], TOP_SELECTION, extra=[BOOTSTRAP_NOTE]
        ),
    script:
        "../scripts/repair_bars.py"


rule repair_scatter:
    input:
        summaries=repair_paths(list(MODELS), FIG_ABLATION),
        details=repair_paths(list(MODELS), f"detail-{FIG_ABLATION}"),
    output:
        pdf="results/figures/repair_tokens.pdf",
        png=report(
            "results/figures/repair_tokens.png",
            caption="../report/repair_scatter.rst",
            category="Beyond the paper – who repairs whom",
            subcategory="all models",
        ),
    log:
        "results/logs/figures/repair_scatter.log",
    benchmark:
        "results/benchmarks/figures/repair_scatter.tsv"
    conda:
        "../../envs/analysis.yaml"
    params:
        models=list(MODELS),
        top_fraction=ENGINE["top_fraction"],
        caption=figure_caption(list(MODELS), [FIG_ABLATION], TOP_SELECTION),
    script:
        "../scripts/repair_scatter.py"


rule repair_graph:
    input:
        summaries=repair_paths(list(MODELS), FIG_ABLATION),
        details=repair_paths(list(MODELS), f"detail-{FIG_ABLATION}"),
    output:
        csv=report(
            "results/tables/repair_graph.csv",
            caption="../report/repair_graph.rst",
            category="Tables",
            subcategory="all models",
        ),
        html=report(
            "results/tables/repair_graph.html",
            caption="../report/repair_graph.rst",
            category="Tables",
            subcategory="all models",
        ),
    log:
        "results/logs/figures/repair_graph.log",
    benchmark:
        "results/benchmarks/figures/repair_graph.tsv"
    conda:
        "../../envs/analysis.yaml"
    params:
        models=list(MODELS),
        repairers=REPAIR["repairers"],
        bootstrap=REPAIR_BOOTSTRAP,
        caption=figure_caption(
            list(MODELS), [FIG_ABLATION], TOP_SELECTION, extra=[BOOTSTRAP_NOTE]
        ),
    script:
        "../scripts/repair_graph.py"
