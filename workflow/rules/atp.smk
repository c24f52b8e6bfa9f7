# Attribution patching judged against the exact effects (beyond the paper; engine.atp): AtP and
# AtP*'s GradDrop estimates of every head per shard, with z' chosen as the ablate job of the same
# shard chooses it, reduced beside the exact effects, and the figures and table drawn from them.
# One atp job per (model, shard) writes every ablation's store: the forward graph and backward
# passes are the kind's only through z' - z (engine.atp.measure_atp_kinds).


rule atp:
    input:
        unpack(model_job_input),
        tokens="results/{model}/tokens.zarr",
        top_tokens="results/{model}/attribution/top_tokens.zarr",
    output:
        atp=kind_stores(
            "results/{{model}}/atp/{ablation}/shard-{{shard}}.zarr", ABLATIONS
        ),
    log:
        "results/logs/atp/{model}/shard-{shard}.log",
    benchmark:
        "results/benchmarks/atp/{model}/shard-{shard}.tsv"
    conda:
        "../../envs/engine.yaml"
    threads: model_threads
    resources:
        mem_mb=model_mem_mb,
        runtime=model_runtime,
    params:
        model=model_entry,
        bounds=shard_bounds,
        batch_size=batch_size,
        mean_include_bos=ENGINE["mean_include_bos"],
        top_graddrop=ENGINE["atp_top_graddrop"],
        ablations=ABLATIONS,
        device=config["device"],
        dtype=config["dtype"],
        attrs=run_attrs,
    script:
        "../scripts/atp.py"


rule atp_summary:
    input:
        atp_shards=shards_of("atp"),
        ablation_shards=shards_of("ablation"),
        summary="results/{model}/summary/{ablation}.zarr",
        top_tokens="results/{model}/attribution/top_tokens.zarr",
    output:
        summary=directory("results/{model}/atp/{ablation}.zarr"),
    log:
        "results/logs/atp_summary/{model}/{ablation}.log",
    benchmark:
        "results/benchmarks/atp_summary/{model}/{ablation}.tsv"
    wildcard_constraints:
        ablation="|".join(ABLATIONS),
    conda:
        "../../envs/analysis.yaml"
    params:
        top_k=ATP_SETTINGS["top_k"],
        attrs=run_attrs,
    script:
        "../scripts/atp_summary.py"


# --- figures and table (made when engine.atp is on) ------------------------------------------


rule atp_scatter:
    input:
        summaries=atp_paths(list(MODELS), FIG_ABLATION),
    output:
        pdf="results/figures/atp_vs_exact.pdf",
        png=report(
            "results/figures/atp_vs_exact.png",
            caption="../report/atp_scatter.rst",
            category="Beyond the paper – attribution patching",
            subcategory="all models",
        ),
    log:
        "results/logs/figures/atp_scatter.log",
    benchmark:
        "results/benchmarks/figures/atp_scatter.tsv"
    conda:
        "../../envs/analysis.yaml"
    params:
        models=list(MODELS),
        top_fraction=ENGINE["top_fraction"],
        caption=figure_caption(
            list(MODELS), [FIG_ABLATION], TOP_SELECTION, extra=[ALL_TOO]
        ),
    script:
        "../scripts/atp_scatter.py"


rule atp_error:
    input:
        summaries=atp_paths(list(MODELS), FIG_ABLATION),
    output:
        pdf="results/figures/atp_error_vs_self_repair.pdf",
        png=report(
            "results/figures/atp_error_vs_self_repair.png",
            caption="../report/atp_error.rst",
            category="Beyond the paper – attribution patching",
            subcategory="all models",
        ),
    log:
        "results/logs/figures/atp_error.log",
    benchmark:
        "results/benchmarks/figures/atp_error.tsv"
    conda:
        "../../envs/analysis.yaml"
    params:
        models=list(MODELS),
        top_fraction=ENGINE["top_fraction"],
        caption=figure_caption(
            list(MODELS), [FIG_ABLATION], TOP_SELECTION, extra=[ALL_TOO]
        ),
    script:
        "../scripts/atp_error.py"


rule atp_table:
    input:
        summaries=[atp_paths([m], a)[0] for m in MODELS for a in ABLATIONS],
        repairs=atp_table_repairs,
    output:
        csv=report(
            "results/tables/atp_heads.csv",
            caption="../report/atp_table.rst",
            category="Tables",
            subcategory="all models",
        ),
        html=report(
            "results/tables/atp_heads.html",
            caption="../report/atp_table.rst",
            category="Tables",
            subcategory="all models",
        ),
    log:
        "results/logs/figures/atp_table.log",
    benchmark:
        "results/benchmarks/figures/atp_table.tsv"
    conda:
        "../../envs/analysis.yaml"
    params:
        runs=[[m, a] for m in MODELS for a in ABLATIONS],
        table_heads=ATP_SETTINGS["table_heads"],
        repairers=ATP_SETTINGS["repairers"],
        caption=figure_caption(list(MODELS), ABLATIONS, TOP_SELECTION, extra=[ALL_TOO]),
    script:
        "../scripts/atp_table.py"


# --- the same rules on a task (rules/tasks.smk; engine.atp on): its prompts are the rows, its
# answers the scored positions and every head's top tokens (stages.atp), under each of the
# task's ablations; the summary against task_ablate's exact effects and task_summary's, the
# table under every ablation, the figures under the task's first.


use rule atp as task_atp with:
    input:
        unpack(model_job_input),
        tokens="results/{model}/tasks/{task}/prompts.zarr",
    output:
        atp=kind_stores(
            "results/{{model}}/tasks/{{task}}/atp/{ablation}.zarr", TASK_ATP_KINDS
        ),
    log:
        "results/logs/task_atp/{model}/{task}.log",
    benchmark:
        "results/benchmarks/task_atp/{model}/{task}.tsv"
    wildcard_constraints:
        task=regex_of(TASK_ATP_SHARED),
    params:  # Snakemake updates the base rule's params by name: bounds, none here
        model=model_entry,
        bounds=None,
        batch_size=batch_size,
        mean_include_bos=ENGINE["mean_include_bos"],
        top_graddrop=ENGINE["atp_top_graddrop"],
        ablations=TASK_ATP_KINDS,
        task=lambda w: w.task,
        metric=lambda w: TASKS[w.task]["metric"],
        device=config["device"],
        dtype=config["dtype"],
        attrs=task_attrs,


# A task whose ablations are not task_atp's list (common.smk): one job per kind.
use rule atp as task_atp_per_kind with:
    input:
        unpack(model_job_input),
        tokens="results/{model}/tasks/{task}/prompts.zarr",
    output:
        atp=directory("results/{model}/tasks/{task}/atp/{task_ablation}.zarr"),
    log:
        "results/logs/task_atp/{model}/{task}/{task_ablation}.log",
    benchmark:
        "results/benchmarks/task_atp/{model}/{task}/{task_ablation}.tsv"
    wildcard_constraints:
        task=regex_of(TASK_ATP_ALONE),
    params:
        model=model_entry,
        bounds=None,
        batch_size=batch_size,
        mean_include_bos=ENGINE["mean_include_bos"],
        top_graddrop=ENGINE["atp_top_graddrop"],
        ablations=lambda w: [w.task_ablation],
        task=lambda w: w.task,
        metric=lambda w: TASKS[w.task]["metric"],
        device=config["device"],
        dtype=config["dtype"],
        attrs=task_attrs,


use rule atp_summary as task_atp_summary with:
    input:
        atp_shards=["results/{model}/tasks/{task}/atp/{task_ablation}.zarr"],
        ablation_shards=["results/{model}/tasks/{task}/ablation/{task_ablation}.zarr"],
        summary="results/{model}/tasks/{task}/summary/{task_ablation}.zarr",
    output:
        summary=directory(
            "results/{model}/tasks/{task}/atp/summary-{task_ablation}.zarr"
        ),
    log:
        "results/logs/task_atp_summary/{model}/{task}/{task_ablation}.log",
    benchmark:
        "results/benchmarks/task_atp_summary/{model}/{task}/{task_ablation}.tsv"
    params:
        top_k=ATP_SETTINGS["top_k"],
        attrs=task_attrs,


use rule atp_scatter as task_atp_scatter with:
    input:
        summaries=lambda w: task_atp_summaries(w)[:1],
        metric="results/{model}/tasks/{task}/metric.json",
    output:
        pdf="results/{model}/tasks/{task}/figures/task_atp_scatter.pdf",
        png=report(
            "results/{model}/tasks/{task}/figures/task_atp_scatter.png",
            caption="../report/atp_scatter.rst",
            category="Tasks – {task}",
            subcategory="{model}",
        ),
    log:
        "results/logs/task_atp_scatter/{model}/{task}.log",
    benchmark:
        "results/benchmarks/task_atp_scatter/{model}/{task}.tsv"
    params:
        models=lambda w: [w.model],
        top_fraction=1.0,  # every answer
        caption=task_caption,


use rule atp_error as task_atp_error with:
    input:
        summaries=lambda w: task_atp_summaries(w)[:1],
        metric="results/{model}/tasks/{task}/metric.json",
    output:
        pdf="results/{model}/tasks/{task}/figures/task_atp_error.pdf",
        png=report(
            "results/{model}/tasks/{task}/figures/task_atp_error.png",
            caption="../report/atp_error.rst",
            category="Tasks – {task}",
            subcategory="{model}",
        ),
    log:
        "results/logs/task_atp_error/{model}/{task}.log",
    benchmark:
        "results/benchmarks/task_atp_error/{model}/{task}.tsv"
    params:
        models=lambda w: [w.model],
        top_fraction=1.0,
        caption=task_caption,


use rule atp_table as task_atp_table with:
    input:
        summaries=task_atp_summaries,
        repairs=lambda w: task_paths(w, "attribution/{a}.zarr"),
        metric="results/{model}/tasks/{task}/metric.json",
    output:
        csv=report(
            "results/{model}/tasks/{task}/tables/task_atp_table.csv",
            caption="../report/atp_table.rst",
            category="Tasks – {task}",
            subcategory="{model}",
        ),
        html=report(
            "results/{model}/tasks/{task}/tables/task_atp_table.html",
            caption="../report/atp_table.rst",
            category="Tasks – {task}",
            subcategory="{model}",
        ),
    log:
        "results/logs/task_atp_table/{model}/{task}.log",
    benchmark:
        "results/benchmarks/task_atp_table/{model}/{task}.tsv"
    params:
        runs=lambda w: [[w.model, a] for a in TASKS[w.task]["ablations"]],
        table_heads=ATP_SETTINGS["table_heads"],
        repairers=ATP_SETTINGS["repairers"],
        caption=task_table_caption,
