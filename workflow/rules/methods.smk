# The method comparison on a task (stages/methods.py): per named set, every method's score of
# each head outside it (CoAx's single and conditional effects in energy and logit-difference
# form, the conditional gradient, AtP, EAP-IG), and the table of how well each ranks the task's
# expected backups first, with its figure.


rule task_methods:
    input:
        unpack(model_job_input),
        unpack(picked_sets_input),
        tokens="results/{model}/tasks/{task}/prompts.zarr",
    output:
        methods=directory("results/{model}/tasks/{task}/methods/{ablation_set}.zarr"),
    log:
        "results/logs/task_methods/{model}/{task}/{ablation_set}.log",
    benchmark:
        "results/benchmarks/task_methods/{model}/{task}/{ablation_set}.tsv"
    conda:
        "../../envs/engine.yaml"
    threads: model_threads
    resources:
        mem_mb=model_mem_mb,
        runtime=model_runtime,
    params:
        model=model_entry,
        metric=lambda w: TASKS[w.task]["metric"],
        ablation=task_figure_ablation,
        members=lambda w: TASKS[w.task]["ablation_sets"][w.ablation_set],
        steps=lambda w: TASKS[w.task]["methods"]["eap_ig_steps"],
        batch_size=batch_size,
        mean_include_bos=ENGINE["mean_include_bos"],
        device=config["device"],
        dtype=config["dtype"],
        attrs=task_attrs,
    script:
        "../scripts/task_methods.py"


rule method_table:
    input:
        unpack(method_atp_input),
        methods="results/{model}/tasks/{task}/methods/{ablation_set}.zarr",
        metric="results/{model}/tasks/{task}/metric.json",
    output:
        csv=report(
            "results/{model}/tasks/{task}/tables/methods-{ablation_set}.csv",
            caption="../report/method_table.rst",
            category="Tasks – {task}",
            subcategory="{model}",
        ),
        html=report(
            "results/{model}/tasks/{task}/tables/methods-{ablation_set}.html",
            caption="../report/method_table.rst",
            category="Tasks – {task}",
            subcategory="{model}",
        ),
        pdf="results/{model}/tasks/{task}/figures/methods-{ablation_set}.pdf",
        png=report(
            "results/{model}/tasks/{task}/figures/methods-{ablation_set}.png",
            caption="../report/method_table.rst",
            category="Tasks – {task}",
            subcategory="{model}",
        ),
    log:
        "results/logs/method_table/{model}/{task}/{ablation_set}.log",
    benchmark:
        "results/benchmarks/method_table/{model}/{task}/{ablation_set}.tsv"
    conda:
        "../../envs/analysis.yaml"
    params:
        expected=lambda w: TASKS[w.task]["expected_backups"],
        anchors=lambda w: TASKS[w.task]["methods"]["coax_anchors"],
        bootstrap=REPAIR_BOOTSTRAP,
    script:
        "../scripts/method_table.py"


rule method_seeds:
    input:
        tables=method_seed_tables,
    output:
        csv=report(
            "results/{model}/tasks/{seeded_task}/tables/methods-{ablation_set}-seeds.csv",
            caption="../report/method_seeds.rst",
            category="Tasks – {seeded_task}",
            subcategory="{model}",
        ),
        html=report(
            "results/{model}/tasks/{seeded_task}/tables/methods-{ablation_set}-seeds.html",
            caption="../report/method_seeds.rst",
            category="Tasks – {seeded_task}",
            subcategory="{model}",
        ),
    log:
        "results/logs/method_seeds/{model}/{seeded_task}/{ablation_set}.log",
    benchmark:
        "results/benchmarks/method_seeds/{model}/{seeded_task}/{ablation_set}.tsv"
    conda:
        "../../envs/analysis.yaml"
    params:
        seeds=lambda w: [TASKS[t]["prompt_seed"] for t in SEEDED_TASKS[w.seeded_task]],
    script:
        "../scripts/method_seeds.py"
