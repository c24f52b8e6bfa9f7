# Beyond the paper: self-repair on tasks (config `tasks`; selfrepair.tasks, stages/tasks.py,
# stages/task_summaries.py, stages/task_figures.py). Per model and task, under
# results/{model}/tasks/{task}/: the prompts (from the model's own tokenizer), the clean pass on
# the task's metric, every head under each of the task's ablations with who repairs whom, each
# named set of heads ablated jointly, the summaries, the backup-heads table and the figures of
# the task's first ablation, and an explorer page. Per-token stores keep the answer positions.


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


rule task_clean:
    input:
        unpack(model_input),
        tokens="results/{model}/tasks/{task}/prompts.zarr",
    output:
        clean=directory("results/{model}/tasks/{task}/clean.zarr"),
        metric="results/{model}/tasks/{task}/metric.json",
    log:
        "results/logs/task_clean/{model}/{task}.log",
    benchmark:
        "results/benchmarks/task_clean/{model}/{task}.tsv"
    conda:
        "../../envs/engine.yaml"
    threads: model_threads
    resources:
        mem_mb=model_mem_mb,
        runtime=model_runtime,
    params:
        model=model_entry,
        metric=lambda w: TASKS[w.task]["metric"],
        batch_size=batch_size,
        device=config["device"],
        dtype=config["dtype"],
        attrs=task_attrs,
    script:
        "../scripts/task_clean.py"


rule task_ablate:
    input:
        unpack(model_job_input),
        tokens="results/{model}/tasks/{task}/prompts.zarr",
    output:
        heads=directory("results/{model}/tasks/{task}/ablation/{task_ablation}.zarr"),
        sums=directory(
            "results/{model}/tasks/{task}/attribution/sums-{task_ablation}.zarr"
        ),
        detail=directory(
            "results/{model}/tasks/{task}/attribution/detail-{task_ablation}.zarr"
        ),
    log:
        "results/logs/task_ablate/{model}/{task}/{task_ablation}.log",
    benchmark:
        "results/benchmarks/task_ablate/{model}/{task}/{task_ablation}.tsv"
    conda:
        "../../envs/engine.yaml"
    threads: model_threads
    resources:
        mem_mb=model_mem_mb,
        runtime=model_runtime,
    params:
        model=model_entry,
        metric=lambda w: TASKS[w.task]["metric"],
        ablation=lambda w: sr_config.parse_ablation(w.task_ablation)[0],
        freeze_ln=lambda w: sr_config.parse_ablation(w.task_ablation)[1],
        batch_size=batch_size,
        heads_per_pass=ENGINE["heads_per_pass"],
        mean_include_bos=ENGINE["mean_include_bos"],
        device=config["device"],
        dtype=config["dtype"],
        attrs=task_attrs,
    script:
        "../scripts/task_ablate.py"


rule task_set_ablate:
    input:
        unpack(model_job_input),
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


rule task_summary:
    input:
        heads="results/{model}/tasks/{task}/ablation/{task_ablation}.zarr",
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
    conda:
        "../../envs/analysis.yaml"
    params:
        de_epsilon=ENGINE["de_epsilon"],
        resamples=FIGURES["bootstrap"]["resamples"],
        level=FIGURES["bootstrap"]["level"],
        seed=config["seed"],
        attrs=task_attrs,
    script:
        "../scripts/task_summary.py"


# --- the per-head table (every ablation), the backup-heads table and the figures (the task's
# first ablation) ---------------------------------------------------------------------------------


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


rule task_head_table:
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
    conda:
        "../../envs/analysis.yaml"
    params:
        ablations=lambda w: TASKS[w.task]["ablations"],
        caption=task_table_caption,
    script:
        "../scripts/task_head_table.py"


rule task_self_repair_per_head:
    input:
        unpack(task_figure_input),
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
    conda:
        "../../envs/analysis.yaml"
    params:
        ablation=task_figure_ablation,
        caption=task_caption,
    script:
        "../scripts/task_self_repair_per_head.py"


rule task_de_vs_metric_drop:
    input:
        unpack(task_figure_input),
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
    conda:
        "../../envs/analysis.yaml"
    params:
        ablation=task_figure_ablation,
        caption=task_caption,
    script:
        "../scripts/task_de_vs_metric_drop.py"


rule task_repairer_heatmap:
    input:
        unpack(task_figure_input),
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
    conda:
        "../../envs/analysis.yaml"
    params:
        ablation=task_figure_ablation,
        caption=task_caption,
    script:
        "../scripts/task_repairer_heatmap.py"


rule task_repair_bars:
    input:
        unpack(task_figure_input),
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
    conda:
        "../../envs/analysis.yaml"
    params:
        ablation=task_figure_ablation,
        most_repaired=REPAIR["most_repaired"],
        repairers=REPAIR["repairers"],
        bootstrap=REPAIR_BOOTSTRAP,
        caption=task_caption,
    script:
        "../scripts/task_repair_bars.py"


rule task_explorer:
    input:
        unpack(model_input),
        prompts="results/{model}/tasks/{task}/prompts.zarr",
        metric="results/{model}/tasks/{task}/metric.json",
        heads=lambda w: task_paths(w, "ablation/{a}.zarr"),
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
    conda:
        "../../envs/engine.yaml"
    params:
        model_entry=model_entry,
        ablations=lambda w: TASKS[w.task]["ablations"],
        tokens_per_head=config["explorer"]["tokens_per_head"],
        context=config["explorer"]["context"],
        repairers=config["explorer"]["repairers"],
    script:
        "../scripts/task_explorer.py"
