# One rule per figure. Each reads xarray reductions, calls one selfrepair.plots function and
# writes results/figures/figNN_<name>.pdf and .png; the PNG is registered in the report with a
# caption (workflow/report/figNN.rst) whose last paragraph, `params.caption`, states what was
# measured: models, ablation, tokens, selection and substitutions (selfrepair.plots.captions).
# Helpers (figure_paths, summary_paths, FIGURE_NAMES, *_SELECTION) live in common.smk.


rule fig01:
    input:
        summaries=summary_paths(list(MODELS), FIGURES["ablation"]),
    output:
        pdf=figure_paths("fig01_self_repair_per_head")["pdf"],
        png=report(
            figure_paths("fig01_self_repair_per_head")["png"],
            caption="../report/fig01.rst",
            category="Fig 01: self-repair per head",
            subcategory="all models",
        ),
    log:
        "results/logs/figures/fig01.log",
    benchmark:
        "results/benchmarks/figures/fig01.tsv"
    conda:
        "../../envs/analysis.yaml"
    params:
        models=list(MODELS),
        n_tokens=N_PREDICTIONS,
        top_fraction=ENGINE["top_fraction"],
        caption=captions.measured(
            models=list(MODELS),
            ablations=[FIGURES["ablation"]],
            n_tokens=N_PREDICTIONS,
            selection=TOP_SELECTION,
        ),
    script:
        "../scripts/fig01_self_repair_per_head.py"
