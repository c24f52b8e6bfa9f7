# Beyond the paper: self-repair on tasks (config `tasks`; selfrepair.tasks, stages/tasks.py,
# stages/task_summaries.py). Per model and task, under results/{model}/tasks/{task}/: the prompts
# (from the model's own tokenizer), then the running-text rules on the task's answers, each a
# `use rule` variant running the text rule's stage function and script (the clean pass on the
# task's metric, every head under each of the task's ablations with who repairs whom, the
# summaries, the figures and the explorer page), each named set of heads ablated jointly and the
# backup-heads table. Per-token stores keep the answer positions.


# Its tokenizer only (a trained model's trained tokenizer), and first among the jobs ready: every
# line is checked before any model trains or runs.
rule task_prompts:
    input:
        unpack(task_tokenizer_input),
        prompts_file=task_file_input,
    output:
        prompts=directory("results/{model}/tasks/{task}/prompts.zarr"),
    log:
        "results/logs/task_prompts/{model}/{task}.log",
    benchmark:
        "results/benchmarks/task_prompts/{model}/{task}.tsv"
    priority: 50
    conda:
        "../../envs/engine.yaml"
    params:
        spec=lambda w: TASKS[w.task],
        model=model_entry,
        seed=config["seed"],
        n_ctx=lambda w: sr_config.model_context(config, ENTRIES[w.model]),
        attrs=task_attrs,
    script:
        "../scripts/task_prompts.py"


# The task's clean metric as JSON (what captions and the sets read), from its clean store's
# provenance (clean_cache writes it there: stages.clean.task_metric); running text has none.
rule task_metric:
    input:
        clean=lambda w: task_store(w, "clean"),
    output:
        metric="results/{model}/tasks/{task}/metric.json",
    log:
        "results/logs/task_metric/{model}/{task}.log",
    benchmark:
        "results/benchmarks/task_metric/{model}/{task}.tsv"
    conda:
        "../../envs/analysis.yaml"
    script:
        "../scripts/task_metric.py"


# Every head's ablation on a task's prompts: the running-text rule and stage function
# (rules/ablation.smk) with the task's rows, answers and metric. Params are the base rule's
# updated by name: each a shard's only is set to None here.
use rule ablate as task_ablate with:
    input:
        unpack(model_job_input),
        tokens="results/{model}/tasks/{task}/prompts.zarr",
    output:
        heads=directory("results/{model}/tasks/{task}/ablation/{task_ablation}.zarr"),
        attribution=directory(
            "results/{model}/tasks/{task}/attribution/sums-{task_ablation}.zarr"
        ),
        detail=directory(
            "results/{model}/tasks/{task}/attribution/detail-{task_ablation}.zarr"
        ),
    log:
        "results/logs/task_ablate/{model}/{task}/{task_ablation}.log",
    benchmark:
        "results/benchmarks/task_ablate/{model}/{task}/{task_ablation}.tsv"
    wildcard_constraints:
        model=regex_of(ENTRIES),  # a tasks_only model too (ablate's: the text models)
    params:
        model=model_entry,
        bounds=None,
        batch_size=batch_size,
        heads_per_pass=ENGINE["heads_per_pass"],
        mean_include_bos=ENGINE["mean_include_bos"],
        ablation=lambda w: sr_config.parse_ablation(w.task_ablation)[0],
        freeze_ln=lambda w: sr_config.parse_ablation(w.task_ablation)[1],
        device=config["device"],
        dtype=config["dtype"],
        keep=None,
        picks=None,
        task=lambda w: w.task,
        metric=lambda w: TASKS[w.task]["metric"],
        attrs=task_attrs,


rule task_set_ablate:
    input:
        unpack(model_job_input),
        unpack(picked_sets_input),
        tokens="results/{model}/tasks/{task}/prompts.zarr",
    output:
        sets=directory("results/{model}/tasks/{task}/sets/{task_ablation}.zarr"),
    log:
        "results/logs/task_set_ablate/{model}/{task}/{task_ablation}.log",
    benchmark:
        "results/benchmarks/task_set_ablate/{model}/{task}/{task_ablation}.tsv"
    conda:
        "../../envs/engine.yaml"
    threads: model_threads
    resources:
        mem_mb=model_mem_mb,
        runtime=model_runtime,
    params:
        model=model_entry,
        metric=lambda w: TASKS[w.task]["metric"],
        ablation=lambda w: w.task_ablation,
        sets=lambda w: TASKS[w.task]["ablation_sets"],
        batch_size=batch_size,
        mean_include_bos=ENGINE["mean_include_bos"],
        device=config["device"],
        dtype=config["dtype"],
        attrs=task_attrs,
    script:
        "../scripts/task_set_ablate.py"


# The same rule and stage on running text (config ablation_sets): one token shard under one of
# `ablations`, every token kept, the paper's metric (no task: no counterfactual, resample's
# partner is the next row of the shard, as the ablate rule's).
use rule task_set_ablate as set_ablate with:
    input:
        unpack(model_job_input),
        tokens="results/{model}/tokens.zarr",
    output:
        sets=directory("results/{model}/sets/{ablation}/shard-{shard}.zarr"),
    log:
        "results/logs/set_ablate/{model}/{ablation}/shard-{shard}.log",
    benchmark:
        "results/benchmarks/set_ablate/{model}/{ablation}/shard-{shard}.tsv"
    params:
        model=model_entry,
        metric=None,
        ablation=lambda w: w.ablation,
        sets=config["ablation_sets"],
        bounds=shard_bounds,
        batch_size=batch_size,
        mean_include_bos=ENGINE["mean_include_bos"],
        device=config["device"],
        dtype=config["dtype"],
        attrs=lambda w: run_attrs(w) | {"shard": w.shard},


# The per-head summary, intervals and who-repairs-whom summary of each ablation over the task's
# answers: summarize_heads' stage with the task's store, its every answer a top token.
use rule summarize_heads as task_summary with:
    input:
        shards=["results/{model}/tasks/{task}/ablation/{task_ablation}.zarr"],
        sums="results/{model}/tasks/{task}/attribution/sums-{task_ablation}.zarr",
    output:
        summary=directory("results/{model}/tasks/{task}/summary/{task_ablation}.zarr"),
        intervals=directory(
            "results/{model}/tasks/{task}/intervals/{task_ablation}.zarr"
        ),
        repairs=directory(
            "results/{model}/tasks/{task}/attribution/{task_ablation}.zarr"
        ),
    log:
        "results/logs/task_summary/{model}/{task}/{task_ablation}.log",
    benchmark:
        "results/benchmarks/task_summary/{model}/{task}/{task_ablation}.tsv"
    params:  # Snakemake updates the base rule's params by name
        top_fraction=1.0,  # every answer
        attrs=task_attrs,


# --- the backup-heads table and the per-head table (every ablation), and the figures (the
# task's first ablation) --------------------------------------------------------------------------


rule task_backups:
    input:
        unpack(task_figure_input),
        sets=task_sets_input,
    output:
        csv=report(
            "results/{model}/tasks/{task}/tables/backup_heads.csv",
            caption="../report/task_backups.rst",
            category="Tasks – {task}",
            subcategory="{model}",
        ),
        html=report(
            "results/{model}/tasks/{task}/tables/backup_heads.html",
            caption="../report/task_backups.rst",
            category="Tasks – {task}",
            subcategory="{model}",
        ),
    log:
        "results/logs/task_backups/{model}/{task}.log",
    benchmark:
        "results/benchmarks/task_backups/{model}/{task}.tsv"
    conda:
        "../../envs/analysis.yaml"
    params:
        expected=lambda w: TASKS[w.task]["expected_backups"],
        roles=lambda w: TASKS[w.task]["roles"],
        n_heads=lambda w: TASKS[w.task]["backup_heads"],
        n_backups=REPAIR["repairers"],
        caption=task_caption,
        bootstrap=REPAIR_BOOTSTRAP,
    script:
        "../scripts/task_backups.py"


use rule head_table as task_head_table with:
    input:
        summaries=lambda w: task_paths(w, "summary/{a}.zarr"),
        intervals=lambda w: task_paths(w, "intervals/{a}.zarr"),
        metric="results/{model}/tasks/{task}/metric.json",
    output:
        csv=report(
            "results/{model}/tasks/{task}/tables/per_head.csv",
            caption="../report/task_head_table.rst",
            category="Tasks – {task}",
            subcategory="{model}",
        ),
        html=report(
            "results/{model}/tasks/{task}/tables/per_head.html",
            caption="../report/task_head_table.rst",
            category="Tasks – {task}",
            subcategory="{model}",
        ),
    log:
        "results/logs/task_head_table/{model}/{task}.log",
    benchmark:
        "results/benchmarks/task_head_table/{model}/{task}.tsv"
    params:
        runs=lambda w: [[w.model, a] for a in TASKS[w.task]["ablations"]],
        caption=task_table_caption,


# Figs 1 and 2 and who repairs whom on the task's answers: the text rules' stages, one model,
# its every answer a top token, titled with the clean metric (param `task`).
use rule fig01 as task_self_repair_per_head with:
    input:
        summaries=lambda w: [task_figure_input(w)["summary"]],
        intervals=lambda w: [task_figure_input(w)["intervals"]],
        metric="results/{model}/tasks/{task}/metric.json",
    output:
        pdf="results/{model}/tasks/{task}/figures/task_self_repair_per_head.pdf",
        png=report(
            "results/{model}/tasks/{task}/figures/task_self_repair_per_head.png",
            caption="../report/task_self_repair_per_head.rst",
            category="Tasks – {task}",
            subcategory="{model}",
        ),
    log:
        "results/logs/task_self_repair_per_head/{model}/{task}.log",
    benchmark:
        "results/benchmarks/task_self_repair_per_head/{model}/{task}.tsv"
    params:
        models=lambda w: [w.model],
        n_tokens=None,
        top_fraction=1.0,
        caption=task_caption,
        task=task_view,


use rule fig02 as task_de_vs_metric_drop with:
    input:
        summaries=lambda w: [task_figure_input(w)["summary"]],
        metric="results/{model}/tasks/{task}/metric.json",
    output:
        pdf="results/{model}/tasks/{task}/figures/task_de_vs_metric_drop.pdf",
        png=report(
            "results/{model}/tasks/{task}/figures/task_de_vs_metric_drop.png",
            caption="../report/task_de_vs_metric_drop.rst",
            category="Tasks – {task}",
            subcategory="{model}",
        ),
    log:
        "results/logs/task_de_vs_metric_drop/{model}/{task}.log",
    benchmark:
        "results/benchmarks/task_de_vs_metric_drop/{model}/{task}.tsv"
    params:
        models=lambda w: [w.model],
        shown=lambda w: [w.model],
        n_tokens=None,
        idealised_from=None,
        caption=task_caption,
        task=task_view,


use rule repair_heatmap as task_repairer_heatmap with:
    input:
        summaries=lambda w: [task_figure_input(w)["repairs"]],
        metric="results/{model}/tasks/{task}/metric.json",
    output:
        pdf="results/{model}/tasks/{task}/figures/task_repairer_heatmap.pdf",
        png=report(
            "results/{model}/tasks/{task}/figures/task_repairer_heatmap.png",
            caption="../report/task_repairer_heatmap.rst",
            category="Tasks – {task}",
            subcategory="{model}",
        ),
    log:
        "results/logs/task_repairer_heatmap/{model}/{task}.log",
    benchmark:
        "results/benchmarks/task_repairer_heatmap/{model}/{task}.tsv"
    params:
        models=lambda w: [w.model],
        top_fraction=1.0,
        caption=task_caption,
        task=task_view,


use rule repair_bars as task_repair_bars with:
    input:
        summaries=lambda w: [task_figure_input(w)["repairs"]],
        details=lambda w: [task_figure_input(w)["detail"]],
        metric="results/{model}/tasks/{task}/metric.json",
    output:
        pdf="results/{model}/tasks/{task}/figures/task_repair_bars.pdf",
        png=report(
            "results/{model}/tasks/{task}/figures/task_repair_bars.png",
            caption="../report/task_repair_bars.rst",
            category="Tasks – {task}",
            subcategory="{model}",
        ),
    log:
        "results/logs/task_repair_bars/{model}/{task}.log",
    benchmark:
        "results/benchmarks/task_repair_bars/{model}/{task}.tsv"
    params:
        models=lambda w: [w.model],
        top_fraction=1.0,
        caption=task_caption,
        task=task_view,


# The head explorer on the task's answers: head_explorer's stage with the task's prompts and
# stores, one per ablation.
use rule head_explorer as task_explorer with:
    input:
        unpack(model_input),
        tokens="results/{model}/tasks/{task}/prompts.zarr",
        metric="results/{model}/tasks/{task}/metric.json",
        shards=lambda w: task_paths(w, "ablation/{a}.zarr"),
        summaries=lambda w: task_paths(w, "summary/{a}.zarr"),
        intervals=lambda w: task_paths(w, "intervals/{a}.zarr"),
        repairs=lambda w: task_paths(w, "attribution/{a}.zarr"),
    output:
        html=report(
            "results/explorer/tasks/{task}/{model}.html",
            caption="../report/explorer.rst",
            category="Head explorer",
            subcategory="{model} on {task}",
        ),
    log:
        "results/logs/task_explorer/{model}/{task}.log",
    benchmark:
        "results/benchmarks/task_explorer/{model}/{task}.tsv"
    params:
        ablations=lambda w: TASKS[w.task]["ablations"],
