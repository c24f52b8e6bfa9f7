# Every figure rule: the paper's per-head figures (1-3, 5, 6, 11, 21-24), the mechanism figures
# (4, 7, 8, 9, 15, 16-18, 19) and the figure beyond the paper (frozen LayerNorm). Each reads
# reductions, calls the function of selfrepair.stages.figures named after the rule (through its
# script) and writes results/figures/<name>.pdf and .png. Names, scripts, captions and report
# categories come from the one figure list, selfrepair.config.figures (figure_* helpers in
# rules/common.smk). The PNG is registered in the report with its caption (report/<tag>.rst)
# whose last paragraph, `params.caption`, states what was measured: models, ablation, tokens,
# selection and substitutions (selfrepair.plots.captions). Near-copies are `use rule ... with:`.


# --- the paper's per-head figures --------------------------------------------------------------


rule fig01:
    input:
        summaries=summary_paths(list(MODELS), FIG_ABLATION),
        intervals=interval_paths(list(MODELS), FIG_ABLATION),
    output:
        pdf="results/figures/fig01_self_repair_per_head.pdf",
        png=report(
            "results/figures/fig01_self_repair_per_head.png",
            caption="../report/fig01.rst",
            category="Fig 01 – self-repair per head",
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
        pdf="results/figures/fig02_de_vs_logit_drop.pdf",
        png=report(
            "results/figures/fig02_de_vs_logit_drop.png",
            caption="../report/fig02.rst",
            category="Fig 02 – direct effect vs logit drop",
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


# Figs 21-24: Fig 2 for the other models, beside Fig 2's model moved onto the ideal lines.
use rule fig02 as fig21_24 with:
    input:
        summaries=summary_paths(
            OTHER_MODELS + [FIGURE_TARGETS["fig02"].model], FIG_ABLATION
        ),
    output:
        pdf="results/figures/fig21-24_de_vs_logit_drop_other_models.pdf",
        png=report(
            "results/figures/fig21-24_de_vs_logit_drop_other_models.png",
            caption="../report/fig21-24.rst",
            category="Fig 21-24 – direct effect vs logit drop, other models",
            subcategory="all models",
        ),
    log:
        "results/logs/figures/fig21-24.log",
    benchmark:
        "results/benchmarks/figures/fig21-24.tsv"
    params:
        models=OTHER_MODELS + [FIGURE_TARGETS["fig02"].model],
        shown=OTHER_MODELS,
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


rule fig03:
    input:
        shards=shard_paths("ablation", FIGURE_TARGETS["fig03"].model, FIG_ABLATION),
        picks=pick_paths({"fig03": FIGURE_TARGETS["fig03"]}),
    output:
        pdf="results/figures/fig03_tokens_de_vs_logit_drop.pdf",
        png=report(
            "results/figures/fig03_tokens_de_vs_logit_drop.png",
            caption="../report/fig03.rst",
            category="Fig 03 – per-token direct effect vs logit drop",
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
        pdf="results/figures/fig05_tokens_by_ablation.pdf",
        png=report(
            "results/figures/fig05_tokens_by_ablation.png",
            caption="../report/fig05.rst",
            category="Fig 05 – one head under each ablation",
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
        pdf="results/figures/fig06_ln_share.pdf",
        png=report(
            "results/figures/fig06_ln_share.png",
            caption="../report/fig06.rst",
            category="Fig 06 – LayerNorm share of direct effect",
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


# Fig 11: Fig 6's clipped share beside the unclipped one (same stores and caption paragraph;
# the shared script draws it by the rule's name).
use rule fig06 as fig11 with:
    output:
        pdf="results/figures/fig11_ln_share_unclipped.pdf",
        png=report(
            "results/figures/fig11_ln_share_unclipped.png",
            caption="../report/fig11.rst",
            category="Fig 11 – LayerNorm share, clipped and unclipped",
            subcategory="all models",
        ),
    log:
        "results/logs/figures/fig11.log",
    benchmark:
        "results/benchmarks/figures/fig11.tsv"


# Only when engine.frozen_ln runs a frozen-LayerNorm variant.
if FROZEN_BASE:

    rule extra_frozen_ln:
        input:
            normal=summary_paths(list(MODELS), FROZEN_BASE),
            frozen=summary_paths(list(MODELS), FROZEN_VARIANT),
        output:
            pdf="results/figures/extra_frozen_ln.pdf",
            png=report(
                "results/figures/extra_frozen_ln.png",
                caption="../report/extra_frozen_ln.rst",
                category="Beyond the paper – frozen LayerNorm",
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
                [FROZEN_BASE, FROZEN_VARIANT],
                TOP_SELECTION,
            ),
        script:
            "../scripts/extra_frozen_ln.py"


# --- the mechanism figures (stores of rules/mechanisms.smk) -----------------------------------


rule fig04:
    input:
        norms=norm_paths(target("fig04")["model"]),
        picks=mech_picks(("fig04",)),
    output:
        pdf="results/figures/fig04_ln_scale_ratio.pdf",
        png=report(
            "results/figures/fig04_ln_scale_ratio.png",
            caption="../report/fig04.rst",
            category="Fig 04 – final LayerNorm scale ratio",
            subcategory=target("fig04")["model"],
        ),
    log:
        "results/logs/figures/fig04.log",
    benchmark:
        "results/benchmarks/figures/fig04.tsv"
    conda:
        "../../envs/analysis.yaml"
    params:
        ablations=ABLATIONS,
        target=target("fig04"),
        caption=lambda w, input: mech_caption(
            "fig04", ABLATIONS, TOP_SELECTION, picks=input.picks
        ),
    script:
        "../scripts/fig04_ln_scale_ratio.py"


rule fig16_18:
    input:
        norms=norm_paths(target("fig16_18")["model"]),
        picks=mech_picks(("fig16_18",)),
    output:
        pdf="results/figures/fig16-18_resid_norm_ratio.pdf",
        png=report(
            "results/figures/fig16-18_resid_norm_ratio.png",
            caption="../report/fig16_18.rst",
            category="Figs 16-18 – residual norm ratio",
            subcategory=target("fig16_18")["model"],
        ),
    log:
        "results/logs/figures/fig16_18.log",
    benchmark:
        "results/benchmarks/figures/fig16_18.tsv"
    conda:
        "../../envs/analysis.yaml"
    params:
        ablations=ABLATIONS,
        target=target("fig16_18"),
        caption=lambda w, input: mech_caption(
            "fig16_18", ABLATIONS, ALL_SELECTION, picks=input.picks
        ),
    script:
        "../scripts/fig16_18_resid_norm_ratio.py"


rule fig07:
    input:
        reductions=f"results/{target('fig07')['model']}/neurons/reductions.zarr",
        picks=mech_picks(("fig07",)),
    output:
        pdf="results/figures/fig07_top_repairing_neuron.pdf",
        png=report(
            "results/figures/fig07_top_repairing_neuron.png",
            caption="../report/fig07.rst",
            category="Fig 07 – top self-repairing neuron",
            subcategory=target("fig07")["model"],
        ),
    log:
        "results/logs/figures/fig07.log",
    benchmark:
        "results/benchmarks/figures/fig07.tsv"
    conda:
        "../../envs/analysis.yaml"
    params:
        target=target("fig07"),
        caption=lambda w, input: mech_caption(
            "fig07",
            [MECH["neurons"]["ablation"]],
            MLP_REPAIR_SELECTION,
            picks=input.picks,
        ),
    script:
        "../scripts/fig07_top_repairing_neuron.py"


rule fig08:
    input:
        reductions=[
            f"results/{t.model}/neurons/reductions.zarr" for t in MECH_TARGETS["fig08"]
        ],
        picks=mech_picks(("fig08",)),
    output:
        pdf="results/figures/fig08_neuron_repair_thresholds.pdf",
        png=report(
            "results/figures/fig08_neuron_repair_thresholds.png",
            caption="../report/fig08.rst",
            category="Fig 08 – neuron repair thresholds",
            subcategory="one head per model",
        ),
    log:
        "results/logs/figures/fig08.log",
    benchmark:
        "results/benchmarks/figures/fig08.tsv"
    conda:
        "../../envs/analysis.yaml"
    params:
        targets=[t.as_params() for t in MECH_TARGETS["fig08"]],
        ranks=MECH["neurons"]["ranks"],
        caption=lambda w, input: mech_caption(
            "fig08", [MECH["neurons"]["ablation"]], TOP_SELECTION, picks=input.picks
        ),
    script:
        "../scripts/fig08_neuron_repair_thresholds.py"


rule fig15:
    input:
        reductions=f"results/{target('fig15')['model']}/neurons/reductions.zarr",
        picks=mech_picks(("fig15",)),
    output:
        pdf="results/figures/fig15_neuron_cumulative_share.pdf",
        png=report(
            "results/figures/fig15_neuron_cumulative_share.png",
            caption="../report/fig15.rst",
            category="Fig 15 – cumulative neuron self-repair",
            subcategory=target("fig15")["model"],
        ),
    log:
        "results/logs/figures/fig15.log",
    benchmark:
        "results/benchmarks/figures/fig15.tsv"
    conda:
        "../../envs/analysis.yaml"
    params:
        target=target("fig15"),
        caption=lambda w, input: mech_caption(
            "fig15", [MECH["neurons"]["ablation"]], TOP_SELECTION, picks=input.picks
        ),
    script:
        "../scripts/fig15_neuron_cumulative_share.py"


rule fig09:
    input:
        reinforcement=f"results/{target('fig09')['model']}/reinforcement/reinforcement.zarr",
        picks=mech_picks(("fig09",)),
    output:
        pdf="results/figures/fig09_self_repression.pdf",
        png=report(
            "results/figures/fig09_self_repression.png",
            caption="../report/fig09.rst",
            category="Fig 09 – self-repression",
            subcategory=target("fig09")["model"],
        ),
    log:
        "results/logs/figures/fig09.log",
    benchmark:
        "results/benchmarks/figures/fig09.tsv"
    conda:
        "../../envs/analysis.yaml"
    params:
        target=target("fig09"),
        scales=MECH["reinforcement"]["scales"][:1],
        caption=lambda w, input: mech_caption(
            "fig09",
            ["none (the head's own output is added back)"],
            REINFORCEMENT_SELECTION,
            n_tokens=REINFORCEMENT_TOKENS,
            picks=input.picks,
        ),
    script:
        "../scripts/fig09_19_self_repression.py"


# Fig 19: Fig 9's head at every measured scale (the same store and caption paragraph).
use rule fig09 as fig19 with:
    output:
        pdf="results/figures/fig19_self_repression_scales.pdf",
        png=report(
            "results/figures/fig19_self_repression_scales.png",
            caption="../report/fig19.rst",
            category="Fig 19 – self-repression by scale",
            subcategory=target("fig09")["model"],
        ),
    log:
        "results/logs/figures/fig19.log",
    benchmark:
        "results/benchmarks/figures/fig19.tsv"
    params:
        scales=MECH["reinforcement"]["scales"],
