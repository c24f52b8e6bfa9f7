"""Names shared by the engine, the reductions and the figures (no heavy imports here, so the
analysis environment needs neither torch nor TransformerLens)."""

__all__ = ["ABLATIONS", "HEAD_VARIABLES"]

ABLATIONS = ("resample", "mean", "zero")

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
