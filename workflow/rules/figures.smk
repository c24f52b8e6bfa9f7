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
        pdf=figure_pdf("fig01"),
        png=figure_png("fig01", "all models"),
    log:
        figure_log("fig01"),
    benchmark:
        figure_benchmark("fig01")
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
        figure_script("fig01")


rule fig02:
    input:
        summaries=summary_paths(FIGURE_TARGETS["fig02"].model, FIG_ABLATION),
    output:
        pdf=figure_pdf("fig02"),
        png=figure_png("fig02", FIGURE_TARGETS["fig02"].model),
    log:
        figure_log("fig02"),
    benchmark:
        figure_benchmark("fig02")
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
        figure_script("fig02")


# Figs 21-24: Fig 2 for the other models, beside Fig 2's model moved onto the ideal lines.
use rule fig02 as fig21_24 with:
    input:
        summaries=summary_paths(
            OTHER_MODELS + [FIGURE_TARGETS["fig02"].model], FIG_ABLATION
        ),
    output:
        pdf=figure_pdf("fig21_24"),
        png=figure_png("fig21_24", "all models"),
    log:
        figure_log("fig21_24"),
    benchmark:
        figure_benchmark("fig21_24")
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
        shards=shard_paths(FIGURE_TARGETS["fig03"].model, FIG_ABLATION),
        picks=pick_paths({"fig03": FIGURE_TARGETS["fig03"]}),
    output:
        pdf=figure_pdf("fig03"),
        png=figure_png("fig03", FIGURE_TARGETS["fig03"].model),
    log:
        figure_log("fig03"),
    benchmark:
        figure_benchmark("fig03")
    conda:
        "../../envs/analysis.yaml"
    params:
        target=FIGURE_TARGETS["fig03"].as_params(),
        n_tokens=N_PREDICTIONS,
        caption=lambda w, input: one_target_caption(
            resolved(FIGURE_TARGETS["fig03"], input.picks), [FIG_ABLATION]
        ),
    script:
        figure_script("fig03")


rule fig05:
    input:
        unpack(fig05_shards),
    output:
        pdf=figure_pdf("fig05"),
        png=figure_png("fig05", FIGURE_TARGETS["fig05"].model),
    log:
        figure_log("fig05"),
    benchmark:
        figure_benchmark("fig05")
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
        figure_script("fig05")


rule fig06:
    input:
        summaries=summary_paths(list(MODELS), FIG_ABLATION),
        intervals=interval_paths(list(MODELS), FIG_ABLATION),
    output:
        pdf=figure_pdf("fig06"),
        png=figure_png("fig06", "all models"),
    log:
        figure_log("fig06"),
    benchmark:
        figure_benchmark("fig06")
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
        figure_script("fig06")


# Fig 11: Fig 6's clipped share beside the unclipped one (same stores and caption paragraph;
# the shared script draws it by the rule's name).
use rule fig06 as fig11 with:
    output:
        pdf=figure_pdf("fig11"),
        png=figure_png("fig11", "all models"),
    log:
        figure_log("fig11"),
    benchmark:
        figure_benchmark("fig11")


# Only when engine.frozen_ln runs a frozen-LayerNorm variant.
if FROZEN_BASE:

    rule extra_frozen_ln:
        input:
            normal=summary_paths(list(MODELS), FROZEN_BASE),
            frozen=summary_paths(list(MODELS), f"{FROZEN_BASE}-frozen-ln"),
        output:
            pdf=figure_pdf("extra_frozen_ln"),
            png=figure_png("extra_frozen_ln", "all models"),
        log:
            figure_log("extra_frozen_ln"),
        benchmark:
            figure_benchmark("extra_frozen_ln")
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
            figure_script("extra_frozen_ln")


# --- the mechanism figures (stores of rules/mechanisms.smk) -----------------------------------


rule fig04:
    input:
        norms=norm_paths(target("fig04")["model"]),
        picks=mech_picks(("fig04",)),
    output:
        pdf=figure_pdf("fig04"),
        png=figure_png("fig04", target("fig04")["model"]),
    log:
        figure_log("fig04"),
    benchmark:
        figure_benchmark("fig04")
    conda:
        "../../envs/analysis.yaml"
    params:
        ablations=ABLATIONS,
        target=target("fig04"),
        caption=lambda w, input: mech_caption(
            "fig04", ABLATIONS, TOP_SELECTION, picks=input.picks
        ),
    script:
        figure_script("fig04")


rule fig16_18:
    input:
        norms=norm_paths(target("fig16_18")["model"]),
        picks=mech_picks(("fig16_18",)),
    output:
        pdf=figure_pdf("fig16_18"),
        png=figure_png("fig16_18", target("fig16_18")["model"]),
    log:
        figure_log("fig16_18"),
    benchmark:
        figure_benchmark("fig16_18")
    conda:
        "../../envs/analysis.yaml"
    params:
        ablations=ABLATIONS,
        target=target("fig16_18"),
        caption=lambda w, input: mech_caption(
            "fig16_18", ABLATIONS, ALL_SELECTION, picks=input.picks
        ),
    script:
        figure_script("fig16_18")


rule fig07:
    input:
        reductions=f"results/{target('fig07')['model']}/neurons/reductions.zarr",
        picks=mech_picks(("fig07",)),
    output:
        pdf=figure_pdf("fig07"),
        png=figure_png("fig07", target("fig07")["model"]),
    log:
        figure_log("fig07"),
    benchmark:
        figure_benchmark("fig07")
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
        figure_script("fig07")


rule fig08:
    input:
        reductions=[
            f"results/{t.model}/neurons/reductions.zarr" for t in MECH_TARGETS["fig08"]
        ],
        picks=mech_picks(("fig08",)),
    output:
        pdf=figure_pdf("fig08"),
        png=figure_png("fig08", "one head per model"),
    log:
        figure_log("fig08"),
    benchmark:
        figure_benchmark("fig08")
    conda:
        "../../envs/analysis.yaml"
    params:
        targets=[t.as_params() for t in MECH_TARGETS["fig08"]],
        ranks=MECH["neurons"]["ranks"],
        caption=lambda w, input: mech_caption(
            "fig08", [MECH["neurons"]["ablation"]], TOP_SELECTION, picks=input.picks
        ),
    script:
        figure_script("fig08")


rule fig15:
    input:
        reductions=f"results/{target('fig15')['model']}/neurons/reductions.zarr",
        picks=mech_picks(("fig15",)),
    output:
        pdf=figure_pdf("fig15"),
        png=figure_png("fig15", target("fig15")["model"]),
    log:
        figure_log("fig15"),
    benchmark:
        figure_benchmark("fig15")
    conda:
        "../../envs/analysis.yaml"
    params:
        target=target("fig15"),
        caption=lambda w, input: mech_caption(
            "fig15", [MECH["neurons"]["ablation"]], TOP_SELECTION, picks=input.picks
        ),
    script:
        figure_script("fig15")


rule fig09:
    input:
        reinforcement=f"results/{target('fig09')['model']}/reinforcement/reinforcement.zarr",
        picks=mech_picks(("fig09",)),
    output:
        pdf=figure_pdf("fig09"),
        png=figure_png("fig09", target("fig09")["model"]),
    log:
        figure_log("fig09"),
    benchmark:
        figure_benchmark("fig09")
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
        figure_script("fig09")


# Fig 19: Fig 9's head at every measured scale (the same store and caption paragraph).
use rule fig09 as fig19 with:
    output:
        pdf=figure_pdf("fig19"),
        png=figure_png("fig19", target("fig09")["model"]),
    log:
        figure_log("fig19"),
    benchmark:
        figure_benchmark("fig19")
    params:
        scales=MECH["reinforcement"]["scales"],
