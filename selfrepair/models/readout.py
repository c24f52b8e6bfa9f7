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

import torch
from jaxtyping import Float, Int
from torch import Tensor

from selfrepair.models.kinds import centres, has_bias, has_weight, is_norm

if TYPE_CHECKING:
    from transformer_lens import HookedTransformer

__all__ = [
    "Readout",
    "effective_unembedding",
    "final_norm",
    "readout",
]


@dataclass(frozen=True)
class Readout:
    """Effective unembedding of a model on the model's device, float32: column y is

        u_y = (w_ln * W_U[:, y] - mean_vocab) - mean_model[y]

    built when asked (`columns`) from the model's own W_U and a few vectors, with the same float
    operations, element by element, as the full [d_model, d_vocab] matrix (effective_unembedding)
    would take: the same bits, and no copy of W_U beside the model's (154 MiB at GPT-2's
    vocabulary, the engine's largest tensor after the weights)."""

    w_unembed: Float[Tensor, "d_model d_vocab"]  # the model's W_U itself, not a copy
    w_ln: Float[Tensor, " d_model"] | None  # final LayerNorm/RMSNorm weight (None: folded or Pre)
    mean_vocab: Float[Tensor, " d_model"]  # mean over the vocabulary of w_ln * W_U
    mean_model: Float[Tensor, " d_vocab"] | None  # LayerNorm: then the mean over d_model
    b_u: Float[Tensor, " d_vocab"]  # LN bias pushed through W_U, plus b_U, vocab-centred
    centre: bool  # LayerNorm subtracts the mean over d_model; RMSNorm does not
    eps: float

    def columns(self, tokens: Int[Tensor, "..."]) -> Float[Tensor, "... d_model"]:
        """u_y of every token y in `tokens` (the effective unembedding's columns)."""
        w = self.w_unembed.T[tokens].float()
        if self.w_ln is not None:
            w = self.w_ln * w
        w = w - self.mean_vocab
        if self.mean_model is not None:
            w = w - self.mean_model[tokens][..., None]
        return w

    def directions(
        self, targets: Int[Tensor, "batch pos"], counter: Int[Tensor, "batch pos"] | None = None
    ) -> tuple[Float[Tensor, "batch pos d_model"], Float[Tensor, "batch pos"]]:
        """Correct-token direction u_y and constant c_y for every position; with `counter` (a
        counterfactual token per position, metric logit_diff) u_y - u_c and c_y - c_c, so that
        every quantity measures the logit difference between the answer and the counterfactual."""
        if counter is None:
            return self.columns(targets), self.b_u[targets]
        return self.columns(targets) - self.columns(counter), self.b_u[targets] - self.b_u[counter]

    def scale(self, resid: Float[Tensor, "... d_model"]) -> Float[Tensor, ...]:
        """Final-norm scale s(x), as TransformerLens' LayerNorm(Pre)/RMSNorm(Pre) computes it."""
        x = resid.float()
        if self.centre:
            x = x - x.mean(-1, keepdim=True)
        return (x.pow(2).mean(-1) + self.eps).sqrt()


def final_norm(model: HookedTransformer) -> tuple[bool, Tensor | None, Tensor | None]:
    """(centre, weight, bias) of the final norm, float32 (None where the norm has none); fails
    naming it when it is neither a LayerNorm nor an RMSNorm."""
    ln = model.ln_final
    if not is_norm(ln):
        raise NotImplementedError(
            f"final norm {type(ln).__name__} is not supported: self-repair needs a LayerNorm or "
            "RMSNorm before the unembedding"
        )
    weight = ln.w.detach().float() if has_weight(ln) else None
    bias = ln.b.detach().float() if has_bias(ln) else None
    return centres(ln), weight, bias


def effective_unembedding(model: HookedTransformer) -> Float[Tensor, "d_model d_vocab"]:
    """The full matrix of every u_y: W_U with the final norm's weight folded in, centred over
    the vocabulary and (LayerNorm) over d_model. For tests: Readout never holds it."""
    centre, weight, _ = final_norm(model)
    w_u = model.W_U.detach().float()
    if weight is not None:
        w_u = weight[:, None] * w_u
    w_u = w_u - w_u.mean(1, keepdim=True)
    return w_u - w_u.mean(0, keepdim=True) if centre else w_u


# Columns of W_U per piece when the readout's means are taken on a CPU: a multiple of the
# columns torch's vectorised column reduction takes together (32 floats with AVX-512), so each
# column's mean is the same bits as over the whole matrix (tests/test_memory.py checks), and a
# piece of GPT-2's W_U is 12 MiB instead of a 154 MiB copy.
MEAN_COLUMNS = 4096


def pieces(n: int, size: int) -> list[slice]:
    return [slice(i, min(i + size, n)) for i in range(0, n, size)]


def unembedding_means(
    w_unembed: Float[Tensor, "d_model d_vocab"], weight: Tensor | None, centre: bool, size: int
) -> tuple[Float[Tensor, " d_model"], Float[Tensor, " d_vocab"] | None]:
    """mean_vocab and mean_model of Readout from float32 pieces of w_ln * W_U (about `size`
    columns' worth at a time): each row's (column's) mean is the same bits as the whole
    matrix's. The pieces share one buffer and the means are written in place: a piece freed and
    allocated again does not fit its own freed space in glibc's heap (aligned allocations need
    a little more), so each would grow the process by its size."""
    d_model, d_vocab = w_unembed.shape
    # Rows per piece of mean_vocab: no more than W_U has (a small vocabulary's piece would
    # otherwise be sized for rows that do not exist).
    n_rows = max(1, min(d_model, size * d_model // d_vocab))
    buf = torch.empty(max(d_model * min(size, d_vocab), n_rows * d_vocab), device=w_unembed.device)

    def scaled(rows: slice, cols: slice) -> Tensor:
        """w_ln * W_U[rows, cols] as float32, in the buffer."""
        w = w_unembed[rows, cols]
        piece = buf[: w.numel()].view(w.shape).copy_(w)
        return piece if weight is None else piece.mul_(weight[rows, None])

    mean_vocab = torch.empty(d_model, device=w_unembed.device)
    for r in pieces(d_model, n_rows):
        torch.mean(scaled(r, slice(None)), 1, out=mean_vocab[r])
    if not centre:
        return mean_vocab, None
    mean_model = torch.empty(d_vocab, device=w_unembed.device)
    for c in pieces(d_vocab, size):
        torch.mean(scaled(slice(None), c).sub_(mean_vocab[:, None]), 0, out=mean_model[c])
    return mean_vocab, mean_model


def readout(model: HookedTransformer) -> Readout:
    """Build the effective unembedding of a HookedTransformer (processed or not).

    The means are taken over one float32 copy of W_U centred in place and dropped on return
    (on a GPU), or over pieces of MEAN_COLUMNS columns (on a CPU, where a freed 154 MiB copy
    stays in the process's heap), with the same bits."""
    centre, weight, bias = final_norm(model)
    w_unembed = model.W_U.detach()
    b_u = model.b_U.detach().float()
    if bias is not None:
        b_u = b_u + bias @ w_unembed.float()
    if w_unembed.device.type == "cpu":
        mean_vocab, mean_model = unembedding_means(w_unembed, weight, centre, MEAN_COLUMNS)
    else:
        full = w_unembed.float() if weight is None else weight[:, None] * w_unembed.float()
        mean_vocab = full.mean(1)
        mean_model = None
        if centre:  # in place on our own copy only, never on the model's W_U
            full = (
                full.sub_(mean_vocab[:, None]) if weight is not None else full - mean_vocab[:, None]
            )
            mean_model = full.mean(0)
        del full
    return Readout(
        w_unembed=w_unembed,
        w_ln=weight,
        mean_vocab=mean_vocab,
        mean_model=mean_model,
        b_u=b_u - b_u.mean(),
        centre=centre,
        eps=float(model.ln_final.eps),
    )
