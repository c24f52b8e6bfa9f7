# Self-repair over training (beyond the paper; selfrepair.config.checkpoints). A model's training
# checkpoints (models[].revisions, .checkpoints, .train.keep_steps) are model keys of their own,
# <model>@step<N> (CHECKPOINTS, rules/common.smk), measured by the clean_cache and ablate rules
# unchanged on their model's tokens (rule share_tokens), on the first `checkpoint_shards`
# shards and under figures.ablation only. The figure reads them with the model's own stores of
# the same shards: every point of a model's curves is measured on the same tokens.

# Per model with checkpoints: [(model key, step), ...], the model itself (final) last.
TRAINING = {
    m: steps for m, e in MODELS.items() if (steps := sr_config.checkpoint_steps(m, e))
}
CHECKPOINT_SHARDS = SHARDS[: config["checkpoint_shards"] or len(SHARDS)]
CHECKPOINT_TOKENS = sum(
    (stop - start) * (DATA["seq_len"] - 1)
    for start, stop in (sr_config.shard_bounds(DATA, int(s)) for s in CHECKPOINT_SHARDS)
)


def training_checkpoints():
    """Per model, its checkpoints in step order: key, step and the stores the figure reads."""
    shards = {
        kind: "results/{key}/" + kind + "/shard-{shard}.zarr"
        for kind in ("clean", f"ablation/{FIG_ABLATION}")
    }
    return {
        model: [
            {
                "key": key,
                "step": step,
                "clean": expand(shards["clean"], key=key, shard=CHECKPOINT_SHARDS),
                "ablation": expand(
                    shards[f"ablation/{FIG_ABLATION}"], key=key, shard=CHECKPOINT_SHARDS
                ),
            }
            for key, step in steps
        ]
        for model, steps in TRAINING.items()
    }


def training_caption():
    """The 'Measured' paragraph: the models, every checkpoint's step, the tokens."""
    steps = [
        f"{m} at steps {', '.join(f'{s:,}' for _, s in steps)} (the last: {m} itself)"
        for m, steps in TRAINING.items()
    ]
    return captions.measured(
        models=list(TRAINING) or ["none with checkpoints"],
        ablations=[FIG_ABLATION],
        n_tokens=CHECKPOINT_TOKENS,
        selection=captions.Selection(
            ENGINE["top_fraction"], CHECKPOINT_TOKENS
        ).describe(),
        extra=[
            "Checkpoints: " + "; ".join(steps),
            f"Every checkpoint on the same {CHECKPOINT_TOKENS:,} tokens "
            f"(the first {len(CHECKPOINT_SHARDS)} of {len(SHARDS)} token shards)",
        ],
    )


def training_outputs():
    """The training figures' files, when some model has checkpoints (rule all)."""
    if not TRAINING:
        return []
    return [p for f in sr_figures.TRAINING_FIGURES for p in f.files.values()]


rule training_self_repair:
    input:
        clean=[
            p
            for ckpts in training_checkpoints().values()
            for c in ckpts
            for p in c["clean"]
        ],
        ablation=[
            p
            for ckpts in training_checkpoints().values()
            for c in ckpts
            for p in c["ablation"]
        ],
    output:
        pdf=figure_pdf("training_self_repair"),
        png=figure_png("training_self_repair", "models with checkpoints"),
    log:
        figure_log("training_self_repair"),
    benchmark:
        figure_benchmark("training_self_repair")
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
