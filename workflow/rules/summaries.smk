# Reductions of the ablation shards: per-head summaries and their bootstrap intervals (one job,
# one pass over the shards), the table of every model and ablation, and the substitute heads
# picked from them at run time.


rule summarize_heads:
    input:
        shards=shards_of("ablation"),
        top_tokens="results/{model}/attribution/top_tokens.zarr",
    output:
        summary=directory("results/{model}/summary/{ablation}.zarr"),
        intervals=directory("results/{model}/intervals/{ablation}.zarr"),
    log:
        "results/logs/summarize_heads/{model}/{ablation}.log",
    benchmark:
        "results/benchmarks/summarize_heads/{model}/{ablation}.tsv"
    conda:
        "../../envs/analysis.yaml"
    params:
        top_fraction=ENGINE["top_fraction"],
        de_epsilon=ENGINE["de_epsilon"],
        resamples=FIGURES["bootstrap"]["resamples"],
        level=FIGURES["bootstrap"]["level"],
        seed=config["seed"],
        attrs=run_attrs,
    script:
        "../scripts/summarize_heads.py"


rule head_table:
    input:
        summaries=[summary_paths(m, v)[0] for m in MODELS for v in VARIANTS],
        intervals=[interval_paths(m, v)[0] for m in MODELS for v in VARIANTS],
    output:
        csv=report(
            "results/tables/head_summary.csv",
            caption="../report/head_table.rst",
            category="Tables",
            subcategory="all models",
        ),
        html=report(
            "results/tables/head_summary.html",
            caption="../report/head_table.rst",
            category="Tables",
            subcategory="all models",
        ),
    log:
        "results/logs/figures/head_table.log",
    benchmark:
        "results/benchmarks/figures/head_table.tsv"
    conda:
        "../../envs/analysis.yaml"
    params:
        runs=[[m, v] for m in MODELS for v in VARIANTS],
        caption=figure_caption(
            list(MODELS), VARIANTS, TOP_SELECTION, extra=[BOOTSTRAP_NOTE]
        ),
    script:
        "../scripts/head_table.py"


rule pick_substitute:
    input:
        store=pick_store,
    output:
        pick="results/{model}/substitutes/{key}.json",
    log:
        "results/logs/pick_substitute/{model}/{key}.log",
    benchmark:
        "results/benchmarks/pick_substitute/{model}/{key}.tsv"
    wildcard_constraints:
        key="|".join(PICKS) or "(?!)",
    conda:
        "../../envs/analysis.yaml"
    params:
        target=lambda w: PICKS[w.key].key,
        pick=lambda w: PICKS[w.key].pick,
    script:
        "../scripts/pick_substitute.py"
