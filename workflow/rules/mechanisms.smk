# The mechanism experiments (paper sections on LayerNorm, anti-erasure neurons and
# self-reinforcement) and their figures: 4, 7, 8, 9, 15, 16-18, 19. Each experiment runs per
# model on the union of its figures' heads (helpers in rules/mechanisms_common.smk).


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


rule neuron_effects:
    input:
        unpack(model_input),
        tokens="results/{model}/tokens.zarr",
        picks=lambda w: mech_picks(("fig07", "fig08", "fig15"), w.model),
    output:
        selected=directory("results/{model}/neurons/selected.zarr"),
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
        batch_size=batch_size,
        mean_include_bos=ENGINE["mean_include_bos"],
        device=config["device"],
        dtype=config["dtype"],
        attrs=run_attrs,
    script:
        "../scripts/neuron_effects.py"


rule neuron_reductions:
    input:
        selected="results/{model}/neurons/selected.zarr",
    output:
        reductions=directory("results/{model}/neurons/reductions.zarr"),
    log:
        "results/logs/neuron_reductions/{model}.log",
    benchmark:
        "results/benchmarks/neuron_reductions/{model}.tsv"
    conda:
        "../../envs/analysis.yaml"
    params:
        thresholds=MECH["neurons"]["thresholds"],
        top_n=MECH["neurons"]["top_n"],
        attrs=run_attrs,
    script:
        "../scripts/neuron_reductions.py"


rule norm_ratios:
    input:
        unpack(model_input),
        tokens="results/{model}/tokens.zarr",
        shards=ablation_shards,
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
        unpack(model_input),
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


rule fig04:
    input:
        norms=norm_paths(target("fig04")["model"]),
        picks=mech_picks(("fig04",)),
    output:
        pdf=figure_paths(MECHANISM_FIGURES["fig04"])["pdf"],
        png=report(
            figure_paths(MECHANISM_FIGURES["fig04"])["png"],
            caption="../report/fig04.rst",
            category="Fig 04: final LayerNorm scale ratio",
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
        pdf=figure_paths(MECHANISM_FIGURES["fig16_18"])["pdf"],
        png=report(
            figure_paths(MECHANISM_FIGURES["fig16_18"])["png"],
            caption="../report/fig16_18.rst",
            category="Figs 16-18: residual norm ratio",
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
        pdf=figure_paths(MECHANISM_FIGURES["fig07"])["pdf"],
        png=report(
            figure_paths(MECHANISM_FIGURES["fig07"])["png"],
            caption="../report/fig07.rst",
            category="Fig 07: top self-repairing neuron",
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
        pdf=figure_paths(MECHANISM_FIGURES["fig08"])["pdf"],
        png=report(
            figure_paths(MECHANISM_FIGURES["fig08"])["png"],
            caption="../report/fig08.rst",
            category="Fig 08: neuron repair thresholds",
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
        pdf=figure_paths(MECHANISM_FIGURES["fig15"])["pdf"],
        png=report(
            figure_paths(MECHANISM_FIGURES["fig15"])["png"],
            caption="../report/fig15.rst",
            category="Fig 15: cumulative neuron self-repair",
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
        pdf=figure_paths(MECHANISM_FIGURES["fig09"])["pdf"],
        png=report(
            figure_paths(MECHANISM_FIGURES["fig09"])["png"],
            caption="../report/fig09.rst",
            category="Fig 09: self-repression",
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


rule fig19:
    input:
        reinforcement=f"results/{target('fig09')['model']}/reinforcement/reinforcement.zarr",
        picks=mech_picks(("fig09",)),
    output:
        pdf=figure_paths(MECHANISM_FIGURES["fig19"])["pdf"],
        png=report(
            figure_paths(MECHANISM_FIGURES["fig19"])["png"],
            caption="../report/fig19.rst",
            category="Fig 19: self-repression by scale",
            subcategory=target("fig09")["model"],
        ),
    log:
        "results/logs/figures/fig19.log",
    benchmark:
        "results/benchmarks/figures/fig19.tsv"
    conda:
        "../../envs/analysis.yaml"
    params:
        target=target("fig09"),
        scales=MECH["reinforcement"]["scales"],
        caption=lambda w, input: mech_caption(
            "fig09",
            ["none (the head's own output is added back)"],
            REINFORCEMENT_SELECTION,
            n_tokens=REINFORCEMENT_TOKENS,
            picks=input.picks,
        ),
    script:
        "../scripts/fig09_19_self_repression.py"
