"""The running top-k set of tokens the neuron experiment keeps (select_neuron_tokens)."""

from __future__ import annotations

import numpy as np
import torch
from jaxtyping import Float, Int
from torch import Tensor

__all__ = ["TopTokens"]


class TopTokens:
    """The k tokens of highest score seen so far, with their feature rows, updated in place.

    Ties are broken towards the earlier token (lower global index), as reduce.top_token_mask
    breaks them, so streaming gives the same set as selecting over all tokens at once.
    """

    def __init__(self, k: int, features: dict[str, int]):
        self.k = k
        self.score = np.full(k, -np.inf)
        self.index = np.full(k, np.iinfo(np.int64).max, np.int64)  # empty slots sort last
        self.values = {name: np.zeros((k, n), np.float32) for name, n in features.items()}

    def offer(
        self,
        score: Float[Tensor, " m"],
        index: Int[Tensor, " m"],
        values: dict[str, Float[Tensor, "m n"]],
    ) -> None:
        score_np = score.detach().double().cpu().numpy()
        all_score = np.concatenate([self.score, score_np])
        all_index = np.concatenate([self.index, index.cpu().numpy().astype(np.int64)])
        best = np.lexsort((all_index, -all_score))[: self.k]
        chosen = np.zeros(len(all_score), bool)
        chosen[best] = True
        leaving = np.flatnonzero(~chosen[: self.k])  # slots whose token drops out
        entering = np.flatnonzero(chosen[self.k :])  # new tokens that get in
        if len(entering) == 0:
            return
        self.score[leaving] = score_np[entering]
        self.index[leaving] = all_index[self.k + entering]
        picked = torch.as_tensor(entering, device=score.device)
        for name, value in values.items():
            self.values[name][leaving] = value[picked].detach().float().cpu().numpy()

    def in_token_order(self) -> tuple[np.ndarray, np.ndarray, dict[str, np.ndarray]]:
        order = np.argsort(self.index, kind="stable")
        return (
            self.index[order],
            self.score[order],
            {name: v[order] for name, v in self.values.items()},
        )
