# The head explorer: one self-contained HTML page per model (a grid of heads coloured by
# self-repair; click a head for its summary and its top tokens in context) and an index page
# linking them. Both are in the report; open results/explorer/index.html from disk.


rule head_explorer:
    input:
        unpack(model_input),
        tokens="results/{model}/tokens.zarr",
        shards=lambda w: [
            s for a in ABLATIONS for s in shard_paths("ablation", w.model, a)
        ],
        summaries=lambda w: summary_paths(w.model, ABLATIONS),
        intervals=lambda w: interval_paths(w.model, ABLATIONS),
        repairs=lambda w: repair_paths(w.model, ABLATIONS) if ATTRIBUTION else [],
    output:
        html=report(
            "results/explorer/{model}.html",
            caption="../report/explorer.rst",
            category="Head explorer",
            subcategory="{model}",
        ),
    log:
        "results/logs/head_explorer/{model}.log",
    benchmark:
        "results/benchmarks/head_explorer/{model}.tsv"
    conda:
        "../../envs/engine.yaml"
    params:
        model_entry=model_entry,
        ablations=ABLATIONS,
        tokens_per_head=config["explorer"]["tokens_per_head"],
        context=config["explorer"]["context"],
        repairers=config["explorer"]["repairers"],
    script:
        "../scripts/head_explorer.py"


rule explorer_index:
    input:
        pages=[page for _, page in explorer_pages()],
    output:
        html=report(
            "results/explorer/index.html",
            caption="../report/explorer.rst",
            category="Head explorer",
            subcategory="index",
        ),
    log:
        "results/logs/explorer_index.log",
    benchmark:
        "results/benchmarks/explorer_index.tsv"
    conda:
        "../../envs/analysis.yaml"
    params:
        labels=[label for label, _ in explorer_pages()],
    script:
        "../scripts/explorer_index.py"
