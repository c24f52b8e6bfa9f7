"""What a clean_cache store keeps of the heads' clean direct effects (engine.store_tokens).

Under `all` a store holds `de_head` on every token. Its one reader, head_top_tokens, needs only
each head's top k tokens over the whole run (reduce.top_token_mask: clean DE high to low, ties by
token number) and their values. Under `top` a store keeps, per head, its shard's k best tokens by
that same order (`top_candidate_de_head`, `top_candidate_token`: the global token number, row *
n_pos + pos) and, per token, the sums of de_head, de_attn_bias and de_mlp over their layers and
heads (`<name>_sum`, for the check that the direct effects add up to the logit). A head's global
top k tokens are each among the k best of their own shard, so the k best of every shard's
candidates are exactly the global top k.

No I/O and no torch: the analysis environment runs these.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import xarray as xr

from selfrepair.analysis.reduce import best_first
from selfrepair.analysis.shards import LAYOUT, flat_tokens, layout_of, token_dtype
from selfrepair.variables import CLEAN_SUMMED

__all__ = [
    "CANDIDATES",
    "clean_top_layout",
    "merge_top_candidates",
    "shard_candidates",
    "top_candidates",
]

CANDIDATES = ("top_candidate_de_head", "top_candidate_token")
TOP_K = "top_k"  # the attribute: the candidates a top store keeps per head


def top_candidates(de_head: xr.DataArray, k: int) -> xr.Dataset:
    """Per head, the shard's k tokens of highest clean DE (all of them when it has fewer), best
    first and ties by token number (reduce.best_first, as top_token_mask ranks them).

    Args:
        de_head: clean direct effects (layer, head, batch, pos), batch numbered by global row.
        k: the top-token count over the whole run (layout.top_count).

    Returns:
        top_candidate_de_head (float32) and top_candidate_token (shards.token_dtype), dims
        layer, head, top_candidate.
    """
    n_pos = de_head.sizes["pos"]
    rows = de_head["batch"].values.astype(np.int64)
    token = (rows[:, None] * n_pos + np.arange(n_pos)).ravel()
    dtype = token_dtype(int(token.max(initial=0)))
    k = min(k, token.size)
    values, tokens = [], []
    for i in range(de_head.sizes["layer"]):  # a layer at a time: bounded memory
        flat = flat_tokens(de_head.isel(layer=[i]).load())[0]  # [head, token]
        order = best_first(flat, k)
        values.append(np.take_along_axis(flat, order, -1))
        tokens.append(token[order].astype(dtype))
    dims = ("layer", "head", "top_candidate")
    return xr.Dataset(
        {CANDIDATES[0]: (dims, np.stack(values)), CANDIDATES[1]: (dims, np.stack(tokens))}
    )


def clean_top_layout(ds: xr.Dataset, k: int) -> xr.Dataset:
    """A clean_direct_effects Dataset as a `top` store keeps it: de_head replaced by its
    top_candidates, and de_head, de_attn_bias and de_mlp (per layer, which nothing reads per
    token) by their sums per token, `<name>_sum`: the same float32 sums
    engine.clean.total_direct_effect takes, so the decomposition check is the same bits."""
    sums = {f"{name}_sum": ds[name].sum(dims) for name, dims in CLEAN_SUMMED.items()}
    out = ds.drop_vars(list(CLEAN_SUMMED)).assign(sums).merge(top_candidates(ds.de_head, k))
    out.attrs.update(ds.attrs, **{LAYOUT: "top", TOP_K: int(k)})
    return out


def shard_candidates(ds: xr.Dataset, k: int, where: str = "the store") -> xr.Dataset:
    """A clean store's candidates for the top k, from either layout: kept (`top`), or ranked
    from de_head (`all`); ValueError naming the store when it kept fewer than k."""
    if layout_of(ds) == "all":
        return top_candidates(ds.de_head, k)
    kept = int(ds.attrs.get(TOP_K, 0))
    n_tokens = ds.sizes["batch"] * ds.sizes["pos"]
    if kept < min(k, n_tokens):
        raise ValueError(
            f"{where} keeps each head's {kept} best tokens but the top tokens are {k}: it was "
            "made under another engine.top_fraction or data.n_tokens; rerun clean_cache"
        )
    return xr.Dataset({n: ds[n].isel(top_candidate=slice(0, k)) for n in CANDIDATES})


def merge_top_candidates(shards: Sequence[xr.Dataset], k: int) -> tuple[np.ndarray, np.ndarray]:
    """Each head's top k tokens over every shard's candidates: (token numbers [layer, head, k]
    int64, ascending, as top_token_indices gives them; their clean DE in that order)."""
    tokens, values = [], []
    for i in range(shards[0].sizes["layer"]):
        value = np.concatenate([s[CANDIDATES[0]].isel(layer=i).values for s in shards], -1)
        token = np.concatenate(
            [s[CANDIDATES[1]].isel(layer=i).values.astype(np.int64) for s in shards], -1
        )
        filled = np.where(np.isnan(value), -np.inf, value)
        # lexsort: the last key first: value high to low, then token number
        order = np.lexsort((token, -filled), axis=-1)[:, :k]
        best, best_value = (
            np.take_along_axis(token, order, -1),
            np.take_along_axis(value, order, -1),
        )
        layer_tokens, layer_values = [], []
        for t, v in zip(best, best_value, strict=True):  # NaN is no top token (top_token_mask)
            t, v = t[~np.isnan(v)], v[~np.isnan(v)]
            rank = np.argsort(t, kind="stable")
            layer_tokens.append(t[rank])
            layer_values.append(v[rank])
        tokens.append(np.stack(layer_tokens))
        values.append(np.stack(layer_values))
    return np.stack(tokens), np.stack(values)
