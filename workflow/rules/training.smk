# Self-repair over training (beyond the paper; selfrepair.config.checkpoints). A model's training
# checkpoints (models[].revisions, .checkpoints, .train.keep_steps) are model keys of their own,
# <model>@step<N> (CHECKPOINTS, rules/common.smk), measured by the clean_cache and ablate rules
# unchanged on their model's tokens (rule share_tokens), on the first `checkpoint_shards`
# shards and under figures.ablation only. The figure reads them with the model's own stores of
# the same shards: every point of a model's curves is measured on the same tokens.


rule training_self_repair:
    input:
        clean=training_stores("clean"),
        ablation=training_stores("ablation"),
    output:
        pdf="results/figures/training_self_repair.pdf",
        png=report(
            "results/figures/training_self_repair.png",
            caption="../report/training_self_repair.rst",
            category="Beyond the paper – self-repair over training",
            subcategory="models with checkpoints",
        ),
    log:
        "results/logs/figures/training_self_repair.log",
    benchmark:
        "results/benchmarks/figures/training_self_repair.tsv"
    conda:
        "../../envs/analysis.yaml"
    params:
        checkpoints=training_checkpoints(),
        top_fraction=ENGINE["top_fraction"],
        de_epsilon=ENGINE["de_epsilon"],
        n_tokens=CHECKPOINT_TOKENS,
        caption=training_caption(),
    script:
        "../scripts/training_self_repair.py"
