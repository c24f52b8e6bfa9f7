"""Names shared by the engine, the reductions and the figures (no heavy imports here, so the
analysis environment needs neither torch nor TransformerLens)."""

from selfrepair.ablations import TEXT_ABLATIONS

__all__ = [
    "ABLATIONS",
    "CLEAN_SUMMED",
    "HEAD_VARIABLES",
    "METRIC_LABELS",
    "REPAIR_TOTALS",
    "component_kinds",
    "component_names",
    "downstream",
    "head_label",
    "n_components",
]

# The ablation kinds running text takes, in the registry's order (selfrepair.ablations).
ABLATIONS = TEXT_ABLATIONS

# A task's metric (tasks.<name>.metric), as the backup table, captions and axis labels name it.
METRIC_LABELS = {
    "correct_logit": "correct-token logit",
    "logit_diff": "logit difference (answer - counterfactual)",
}


def head_label(layer: int, head: int) -> str:
    """The paper's name of a head, e.g. L22H11 (the one place it is spelled)."""
    return f"L{int(layer)}H{int(head)}"


# Per (layer, head, batch, pos) outputs of engine.measure_heads, all float32, in logits
# except the LayerNorm scale.
HEAD_VARIABLES = (
    "logit_diff",
    "de_clean",
    "de_ablated",
    "self_repair",
    "sr_heads",
    "sr_mlps",
    "sr_ln",
    "ln_scale_ablated",
)

# The head variables whose sums over each head's tokens the attribution stores beside the
# components' (engine.attribution): what the components must add up to, and the drops they are
# compared with.
REPAIR_TOTALS = (
    "self_repair",
    "sr_heads",
    "sr_mlps",
    "sr_ln",
    "de_clean",
    "de_ablated",
    "logit_diff",
)

# The clean cache's direct effects per layer (and head) and the dims the check that they add up
# to the logit sums them over (engine.clean.total_direct_effect); a `top` clean store keeps only
# those sums per token (analysis.clean_layout).
CLEAN_SUMMED = {"de_head": ("layer", "head"), "de_attn_bias": ("layer",), "de_mlp": ("layer",)}


# The components that can repair an ablated head, on one axis: every head (L{l}H{h}, layer-major),
# every MLP layer (MLP{l}), then the final LayerNorm (LN).
def n_components(n_layers: int, n_heads: int) -> int:
    return n_layers * n_heads + n_layers + 1


def component_names(n_layers: int, n_heads: int) -> list[str]:
    """L0H0, ..., L{n-1}H{h-1}, MLP0, ..., MLP{n-1}, LN."""
    heads = [head_label(layer, head) for layer in range(n_layers) for head in range(n_heads)]
    return heads + [f"MLP{layer}" for layer in range(n_layers)] + ["LN"]


def component_kinds(n_layers: int, n_heads: int) -> list[str]:
    """ "head", "mlp" or "ln" per component."""
    return ["head"] * (n_layers * n_heads) + ["mlp"] * n_layers + ["ln"]


def downstream(n_layers: int, n_heads: int, parallel: bool, attn_only: bool) -> list[list[bool]]:
    """[ablated layer][component]: whether the component reads a head of that layer: heads of
    later layers, the MLP of the same layer in a sequential block and every later MLP, and the
    final LayerNorm (always)."""
    rows = []
    for layer in range(n_layers):
        heads = [later > layer for later in range(n_layers) for _ in range(n_heads)]
        first_mlp = layer + 1 if parallel else layer
        mlps = [not attn_only and later >= first_mlp for later in range(n_layers)]
        rows.append(heads + mlps + [True])
    return rows
