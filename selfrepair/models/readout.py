"""The final LayerNorm and centred unembedding, reduced to what one correct-token logit needs.

For a token t and final residual x, the vocabulary-centred logit of target y is

    logit = (x . u_y) / s(x) + c_y

where s(x) is the final LayerNorm (or RMSNorm) scale, u_y the unembedding column of y with the
LayerNorm weight folded in, centred over the vocabulary and (LayerNorm only) over d_model, and
c_y the vocabulary-centred bias. Because u_y is centred over d_model, x . u_y equals the centred
x . u_y, so the direct effect of any component c is simply (c . u_y) / s_clean.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from jaxtyping import Float, Int
from torch import Tensor
from transformer_lens.components import LayerNorm, LayerNormPre, RMSNorm, RMSNormPre

if TYPE_CHECKING:
    from transformer_lens import HookedTransformer

__all__ = [
    "Readout",
    "readout",
]


@dataclass(frozen=True)
class Readout:
    """Effective unembedding of a model, float32, on the model's device."""

    w_u: Float[Tensor, "d_model d_vocab"]  # LN weight folded, vocab-centred (and d_model-centred)
    b_u: Float[Tensor, " d_vocab"]  # LN bias pushed through W_U, plus b_U, vocab-centred
    centre: bool  # LayerNorm subtracts the mean over d_model; RMSNorm does not
    eps: float

    def directions(
        self, targets: Int[Tensor, "batch pos"], counter: Int[Tensor, "batch pos"] | None = None
    ) -> tuple[Float[Tensor, "batch pos d_model"], Float[Tensor, "batch pos"]]:
        """Correct-token direction u_y and constant c_y for every position; with `counter` (a
        counterfactual token per position, metric logit_diff) u_y - u_c and c_y - c_c, so that
        every quantity measures the logit difference between the answer and the counterfactual."""
        if counter is None:
            return self.w_u.T[targets], self.b_u[targets]
        return self.w_u.T[targets] - self.w_u.T[counter], self.b_u[targets] - self.b_u[counter]

    def scale(self, resid: Float[Tensor, "... d_model"]) -> Float[Tensor, ...]:
        """Final-norm scale s(x), as TransformerLens' LayerNorm(Pre)/RMSNorm(Pre) computes it."""
        x = resid.float()
        if self.centre:
            x = x - x.mean(-1, keepdim=True)
        return (x.pow(2).mean(-1) + self.eps).sqrt()


def readout(model: HookedTransformer) -> Readout:
    """Build the effective unembedding of a HookedTransformer (processed or not)."""
    ln = model.ln_final
    w_u = model.W_U.detach().float()
    b_u = model.b_U.detach().float()
    if isinstance(ln, (LayerNorm, RMSNorm)):
        if isinstance(ln, LayerNorm):
            b_u = b_u + ln.b.detach().float() @ w_u
        w_u = ln.w.detach().float()[:, None] * w_u
    elif not isinstance(ln, (LayerNormPre, RMSNormPre)):
        raise NotImplementedError(
            f"final norm {type(ln).__name__} is not supported: self-repair needs a LayerNorm or "
            "RMSNorm before the unembedding"
        )
    centre = isinstance(ln, (LayerNorm, LayerNormPre))
    w_u = w_u - w_u.mean(1, keepdim=True)  # centred logits: subtract the mean over the vocabulary
    b_u = b_u - b_u.mean()
    if centre:
        w_u = w_u - w_u.mean(0, keepdim=True)
    return Readout(w_u=w_u, b_u=b_u, centre=centre, eps=float(ln.eps))
