# Helpers of rules/mechanisms.smk: the resolved targets of config["mechanisms"] (the paper's
# model and heads per figure, or named substitutes; selfrepair.config.mechanisms), the heads each
# model runs, captions and the list of final outputs.
import selfrepair.config.mechanisms as mech_config  # noqa: E402

MECH = config["mechanisms"]
MECH_TARGETS = mech_config.mechanism_targets(config)
NEURON_HEADS = mech_config.heads_by_model(
    MECH_TARGETS["fig07"] + MECH_TARGETS["fig08"] + MECH_TARGETS["fig15"]
)
NORM_HEADS = mech_config.heads_by_model(
    MECH_TARGETS["fig04"] + MECH_TARGETS["fig16_18"]
)
REINFORCEMENT_HEADS = mech_config.heads_by_model(MECH_TARGETS["fig09"])
# Substitutes whose heads are picked at run time from the run's stores (rule pick_substitute);
# the stages and figures read the picked heads from results/<model>/substitutes/<key>.json.
MECH_PICKS = mech_config.pick_targets(MECH_TARGETS)
PICKS = FIGURE_PICKS | MECH_PICKS
SHARD_BOUNDS = [list(sr_config.shard_bounds(DATA, int(s))) for s in SHARDS]
REINFORCEMENT_TOKENS = MECH["reinforcement"]["rows"] * (
    MECH["reinforcement"]["seq_len"] - 1
)
MLP_REPAIR_SELECTION = (
    f"the top {ENGINE['top_fraction']:.0%} of tokens by the MLP layer's self-repair "
    f"({sr_config.top_count(N_PREDICTIONS, ENGINE['top_fraction']):,} of "
    f"{N_PREDICTIONS:,} tokens)"
)
REINFORCEMENT_SELECTION = (
    f"the first {MECH['reinforcement']['rows']} token rows cut to "
    f"{MECH['reinforcement']['seq_len']} tokens, every position"
)
MECHANISM_FIGURES = {
    "fig04": "fig04_ln_scale_ratio",
    "fig07": "fig07_top_repairing_neuron",
    "fig08": "fig08_neuron_repair_thresholds",
    "fig09": "fig09_self_repression",
    "fig15": "fig15_neuron_cumulative_share",
    "fig16_18": "fig16-18_resid_norm_ratio",
    "fig19": "fig19_self_repression_scales",
}


def target(key):
    """The (single) resolved target of a mechanism figure, as plain params."""
    return MECH_TARGETS[key][0].as_params()


def mech_picks(keys, model=None):
    """The pick records of the mechanism targets of these figure keys (of one model if given)."""
    return [
        pick_path(k, t)
        for k, t in MECH_PICKS.items()
        if k.split("-")[0] in keys and model in (None, t.model)
    ]


def pick_store(wildcards):
    """The store a pick reads: the model's reinforcement store (most_self_repressing) or its
    per-head summary under the figures' ablation (largest_top_de: clean DE, the same in all).
    """
    target = PICKS[wildcards.key]
    if target.model != wildcards.model:
        raise ValueError(
            f"pick {wildcards.key} is made in {target.model}, not {wildcards.model}"
        )
    if target.pick["criterion"] == "most_self_repressing":
        return f"results/{target.model}/reinforcement/reinforcement.zarr"
    return summary_paths(target.model, FIG_ABLATION)[0]


def mech_caption(key, ablations, selection, picks=(), n_tokens=N_PREDICTIONS, extra=()):
    """The 'Measured' paragraph of a mechanism figure's caption (picks: the rule's pick
    records, naming picked substitutes and the values that selected them)."""
    targets = [resolved(t, picks) for t in MECH_TARGETS[key]]
    return captions.measured(
        models=list(dict.fromkeys(t.model for t in targets)),
        ablations=ablations,
        n_tokens=n_tokens,
        selection=selection,
        substitutions=[t.substitution() for t in targets if t.substituted],
        extra=extra,
    )


def norm_paths(model):
    return expand(
        "results/{model}/norms/{ablation}.zarr", model=model, ablation=ABLATIONS
    )


def mechanism_outputs():
    """Every final output of the mechanism rules: stores, reductions and figures."""
    outputs = [pick_path(k, t) for k, t in PICKS.items()]
    outputs += [f"results/{m}/neurons/reductions.zarr" for m in NEURON_HEADS]
    outputs += [path for m in NORM_HEADS for path in norm_paths(m)]
    outputs += [
        f"results/{m}/reinforcement/reinforcement.zarr" for m in REINFORCEMENT_HEADS
    ]
    for name in MECHANISM_FIGURES.values():
        outputs += list(figure_paths(name).values())
    return outputs
