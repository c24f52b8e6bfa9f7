# One rule per figure. Each reads xarray reductions, calls one selfrepair.plots function and
# writes results/figures/figNN_<name>.pdf and .png; the PNG is registered in the report with a
# caption (workflow/report/figNN.rst) whose last paragraph, `params.caption`, states what was
# measured: models, ablation, tokens, selection and substitutions (selfrepair.plots.captions).
# Helpers (figure_paths, summary_paths, FIGURE_NAMES, *_SELECTION) live in common.smk.


rule head_intervals:
    input:
        shards=ablation_shards,
    output:
        intervals=directory("results/{model}/intervals/{ablation}.zarr"),
    log:
        "results/logs/head_intervals/{model}/{ablation}.log",
    benchmark:
        "results/benchmarks/head_intervals/{model}/{ablation}.tsv"
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
        "../scripts/head_intervals.py"


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


rule fig01:
    input:
        summaries=summary_paths(list(MODELS), FIG_ABLATION),
        intervals=interval_paths(list(MODELS), FIG_ABLATION),
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
        caption=figure_caption(
            list(MODELS), [FIG_ABLATION], TOP_SELECTION, extra=[BOOTSTRAP_NOTE]
        ),
    script:
        "../scripts/fig01_self_repair_per_head.py"


rule fig02:
    input:
        summaries=summary_paths(FIGURE_TARGETS["fig02"].model, FIG_ABLATION),
    output:
        pdf=figure_paths("fig02_de_vs_logit_drop")["pdf"],
        png=report(
            figure_paths("fig02_de_vs_logit_drop")["png"],
            caption="../report/fig02.rst",
            category="Fig 02: direct effect vs logit drop",
            subcategory=FIGURE_TARGETS["fig02"].model,
        ),
    log:
        "results/logs/figures/fig02.log",
    benchmark:
        "results/benchmarks/figures/fig02.tsv"
    conda:
        "../../envs/analysis.yaml"
    params:
        models=[FIGURE_TARGETS["fig02"].model],
        shown=[FIGURE_TARGETS["fig02"].model],
        n_tokens=N_PREDICTIONS,
        idealised_from=None,
        caption=figure_caption(
            [FIGURE_TARGETS["fig02"].model],
            [FIG_ABLATION],
            ALL_SELECTION,
            FIGURE_TARGETS["fig02"],
        ),
    script:
        "../scripts/fig02_de_vs_logit_drop.py"


rule fig21_24:
    input:
        summaries=summary_paths(
            OTHER_MODELS + [FIGURE_TARGETS["fig02"].model], FIG_ABLATION
        ),
    output:
        pdf=figure_paths("fig21-24_de_vs_logit_drop_other_models")["pdf"],
        png=report(
            figure_paths("fig21-24_de_vs_logit_drop_other_models")["png"],
            caption="../report/fig21-24.rst",
            category="Fig 21-24: direct effect vs logit drop, other models",
            subcategory="all models",
        ),
    log:
        "results/logs/figures/fig21-24.log",
    benchmark:
        "results/benchmarks/figures/fig21-24.tsv"
    conda:
        "../../envs/analysis.yaml"
    params:
        models=OTHER_MODELS + [FIGURE_TARGETS["fig02"].model],
        shown=OTHER_MODELS,
        n_tokens=N_PREDICTIONS,
        idealised_from=FIGURE_TARGETS["fig02"].model,
        caption=figure_caption(
            OTHER_MODELS or ["none besides Fig 2's"],
            [FIG_ABLATION],
            ALL_SELECTION,
            extra=[
                f"Idealised panels: the heads of {FIGURE_TARGETS['fig02'].model} "
                "(Fig 2's model) moved onto y = x and onto y = 0"
            ],
        ),
    script:
        "../scripts/fig02_de_vs_logit_drop.py"


rule fig03:
    input:
        shards=shard_paths(FIGURE_TARGETS["fig03"].model, FIG_ABLATION),
        picks=pick_paths({"fig03": FIGURE_TARGETS["fig03"]}),
    output:
        pdf=figure_paths("fig03_tokens_de_vs_logit_drop")["pdf"],
        png=report(
            figure_paths("fig03_tokens_de_vs_logit_drop")["png"],
            caption="../report/fig03.rst",
            category="Fig 03: per-token direct effect vs logit drop",
            subcategory=FIGURE_TARGETS["fig03"].model,
        ),
    log:
        "results/logs/figures/fig03.log",
    benchmark:
        "results/benchmarks/figures/fig03.tsv"
    conda:
        "../../envs/analysis.yaml"
    params:
        target=FIGURE_TARGETS["fig03"].as_params(),
        n_tokens=N_PREDICTIONS,
        caption=lambda w, input: one_target_caption(
            resolved(FIGURE_TARGETS["fig03"], input.picks), [FIG_ABLATION]
        ),
    script:
        "../scripts/fig03_tokens_de_vs_logit_drop.py"


rule fig05:
    input:
        unpack(fig05_shards),
    output:
        pdf=figure_paths("fig05_tokens_by_ablation")["pdf"],
        png=report(
            figure_paths("fig05_tokens_by_ablation")["png"],
            caption="../report/fig05.rst",
            category="Fig 05: one head under each ablation",
            subcategory=FIGURE_TARGETS["fig05"].model,
        ),
    log:
        "results/logs/figures/fig05.log",
    benchmark:
        "results/benchmarks/figures/fig05.tsv"
    conda:
        "../../envs/analysis.yaml"
    params:
        target=FIGURE_TARGETS["fig05"].as_params(),
        ablations=ABLATIONS,
        n_tokens=N_PREDICTIONS,
        caption=lambda w, input: one_target_caption(
            resolved(FIGURE_TARGETS["fig05"], input.picks), ABLATIONS
        ),
    script:
        "../scripts/fig05_tokens_by_ablation.py"


rule fig06:
    input:
        summaries=summary_paths(list(MODELS), FIG_ABLATION),
        intervals=interval_paths(list(MODELS), FIG_ABLATION),
    output:
        pdf=figure_paths("fig06_ln_share")["pdf"],
        png=report(
            figure_paths("fig06_ln_share")["png"],
            caption="../report/fig06.rst",
            category="Fig 06: LayerNorm share of direct effect",
            subcategory="all models",
        ),
    log:
        "results/logs/figures/fig06.log",
    benchmark:
        "results/benchmarks/figures/fig06.tsv"
    conda:
        "../../envs/analysis.yaml"
    params:
        models=list(MODELS),
        n_tokens=N_PREDICTIONS,
        top_fraction=ENGINE["top_fraction"],
        unclipped=False,
        caption=figure_caption(
            list(MODELS),
            [FIG_ABLATION],
            TOP_SELECTION,
            extra=[
                f"Tokens whose clean direct effect is at most {ENGINE['de_epsilon']} "
                "logits are left out of the share (counted in the summary table)",
                BOOTSTRAP_NOTE,
            ],
        ),
    script:
        "../scripts/fig06_ln_share.py"


rule fig11:
    input:
        summaries=summary_paths(list(MODELS), FIG_ABLATION),
        intervals=interval_paths(list(MODELS), FIG_ABLATION),
    output:
        pdf=figure_paths("fig11_ln_share_unclipped")["pdf"],
        png=report(
            figure_paths("fig11_ln_share_unclipped")["png"],
            caption="../report/fig11.rst",
            category="Fig 11: LayerNorm share, clipped and unclipped",
            subcategory="all models",
        ),
    log:
        "results/logs/figures/fig11.log",
    benchmark:
        "results/benchmarks/figures/fig11.tsv"
    conda:
        "../../envs/analysis.yaml"
    params:
        models=list(MODELS),
        n_tokens=N_PREDICTIONS,
        top_fraction=ENGINE["top_fraction"],
        unclipped=True,
        caption=figure_caption(
            list(MODELS),
            [FIG_ABLATION],
            TOP_SELECTION,
            extra=[
                f"Tokens whose clean direct effect is at most {ENGINE['de_epsilon']} "
                "logits are left out of the share (counted in the summary table)",
                BOOTSTRAP_NOTE,
            ],
        ),
    script:
        "../scripts/fig06_ln_share.py"


# Only when engine.frozen_ln runs a frozen-LayerNorm variant.
if FROZEN_BASE:

    rule extra_frozen_ln:
        input:
            normal=summary_paths(list(MODELS), FROZEN_BASE),
            frozen=summary_paths(list(MODELS), f"{FROZEN_BASE}-frozen-ln"),
        output:
            pdf=figure_paths("extra_frozen_ln")["pdf"],
            png=report(
                figure_paths("extra_frozen_ln")["png"],
                caption="../report/extra_frozen_ln.rst",
                category="Beyond the paper: frozen LayerNorm",
                subcategory="all models",
            ),
        log:
            "results/logs/figures/extra_frozen_ln.log",
        benchmark:
            "results/benchmarks/figures/extra_frozen_ln.tsv"
        conda:
            "../../envs/analysis.yaml"
        params:
            models=list(MODELS),
            n_tokens=N_PREDICTIONS,
            top_fraction=ENGINE["top_fraction"],
            caption=figure_caption(
                list(MODELS),
                [FROZEN_BASE, f"{FROZEN_BASE}-frozen-ln"],
                TOP_SELECTION,
            ),
        script:
            "../scripts/extra_frozen_ln.py"
