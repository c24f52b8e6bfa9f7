"""What each reader of the ablation stores needs from one shard, as small arrays: the head
variables on each head's top tokens, their sums over every token, the all-token bootstrap's
partial totals, the per-row logit sums AtP is judged on, the explorer's candidate tokens and
every token of a few heads.

An ablate job under `engine.store_tokens: top` writes these instead of every token; a reader of
a shard that kept every token (`all`) computes them from it with these same functions, so the
two layouts give the readers the same arrays, bit for bit, and every summary, interval, figure
and page is the same file. Pure: no store I/O.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import xarray as xr

from selfrepair.analysis import explorer
from selfrepair.analysis.attribution import shard_top_mask
from selfrepair.analysis.intervals import resample_draws
from selfrepair.variables import HEAD_VARIABLES

__all__ = [
    "LAYOUT",
    "as_per_token",
    "flat_tokens",
    "bootstrap_sums",
    "candidate_tokens",
    "head_values",
    "kept_heads",
    "layout_of",
    "merge_candidates",
    "not_kept",
    "row_sums",
    "self_repair_bootstrap",
    "shard_attrs",
    "stored_values",
    "summary_parts",
    "token_sums",
    "top_layout",
    "token_dtype",
    "top_values",
]

LAYOUT = "store_tokens"  # the attribute naming a shard's layout: "all" or "top"
# the explorer's (analysis.explorer): values kept per candidate token, its rankings, and the
# values kept over each candidate's window of tokens
CANDIDATE_VALUES = explorer.TOKEN_VALUES
RANKED_BY = explorer.RANKINGS
WINDOWED = explorer.WINDOW_VALUES


def shard_attrs(ds: xr.Dataset) -> dict:
    """A shard's attributes less those of its layout: what readers pass on, the same from
    either layout."""
    skip = {LAYOUT, "boot_n_tokens", "boot_resamples", "boot_seed"}
    return {k: v for k, v in ds.attrs.items() if k not in skip}


def layout_of(ds: xr.Dataset) -> str:
    """ "top" or "all" (stores written before the key existed kept every token)."""
    return str(ds.attrs.get(LAYOUT, "all"))


def flat_tokens(da: xr.DataArray) -> np.ndarray:
    """[layer, head, token] of a (layer, head, batch, pos) array, token = row-major (batch, pos)."""
    values = da.transpose("layer", "head", "batch", "pos").values
    return values.reshape(values.shape[0], values.shape[1], -1)


def token_dtype(largest: int) -> type:
    """The dtype of stored global token numbers: int32 while they fit (half the bytes), else
    int64."""
    return np.int32 if largest <= np.iinfo(np.int32).max else np.int64


def top_values(ds: xr.Dataset, top_token: np.ndarray, start_row: int) -> xr.Dataset:
    """Every head variable on each head's top tokens that fall in this shard, in token order
    (dims layer, head, slot; NaN and token -1 past a head's last one; token_dtype).

    Args:
        ds: one shard's per-token values (dims layer, head, batch, pos).
        top_token: int [layer, head, k] each head's top tokens as global token numbers
            (head_top_tokens: row * n_pos + pos), ascending.
        start_row: the shard's first global row.
    """
    n_tok = ds.sizes["batch"] * ds.sizes["pos"]
    local = top_token - start_row * ds.sizes["pos"]
    inside = (local >= 0) & (local < n_tok)
    # at least one slot (padding): a Zarr array has no zero-length axis
    n_slots = max(1, int(inside.sum(-1).max()) if inside.size else 0)
    # the inside tokens first, in order (a stable sort keeps ascending tokens ascending)
    order = np.argsort(~inside, axis=-1, kind="stable")[..., :n_slots]
    filled = np.take_along_axis(inside, order, -1)
    index = np.where(filled, np.take_along_axis(local, order, -1), 0)
    dims = ("layer", "head", "slot")
    token = np.where(filled, index + start_row * ds.sizes["pos"], -1)
    out = {"top_token": (dims, token.astype(token_dtype(int(token.max(initial=0)))))}
    for name in HEAD_VARIABLES:
        values = np.take_along_axis(flat_tokens(ds[name]), index, -1)
        out[f"top_{name}"] = (dims, np.where(filled, values, np.nan).astype(np.float32))
    return xr.Dataset(out)


def token_sums(ds: xr.Dataset) -> xr.Dataset:
    """Per head, every head variable summed over the shard's tokens (float64, NaN skipped:
    `sum_<name>`) and how many tokens it holds (`count_<name>`)."""
    out = {}
    for name in HEAD_VARIABLES:
        values = flat_tokens(ds[name]).astype(np.float64)
        finite = np.isfinite(values)
        out[f"sum_{name}"] = (("layer", "head"), np.where(finite, values, 0.0).sum(-1))
        out[f"count_{name}"] = (("layer", "head"), finite.sum(-1).astype(np.int64))
    return xr.Dataset(out)


def bootstrap_sums(
    values: np.ndarray, offset: int, n_tokens: int, n_resamples: int, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """This shard's part of the all-token bootstrap (analysis.intervals): for every resample of
    all n_tokens tokens (intervals.resample_blocks, the same draws whichever shard asks), the sum
    of the shard's values weighted by how often each was drawn, and the number of draws of its
    finite values. Added over the shards in order, total / kept is each resample's mean.

    Args:
        values: float [unit, n] the shard's tokens of each unit (e.g. every head).
        offset: the shard's first token among all n_tokens.
        n_tokens: every token of the run, the bootstrap's n.
        n_resamples, seed: the bootstrap's.

    Returns:
        (total, kept), float64 [unit, n_resamples] each.
    """
    values = np.asarray(values, dtype=np.float64)
    finite = np.isfinite(values)
    filled = np.where(finite, values, 0.0)
    weights = finite.astype(np.float64)
    n = values.shape[-1]
    totals, kept = [], []
    for idx in resample_draws(n_tokens, n_resamples, seed):
        # how often each of the shard's tokens is drawn, per resample
        part = np.stack([np.bincount(row, minlength=n_tokens)[offset : offset + n] for row in idx])
        part = part.astype(np.float64)
        totals.append(filled @ part.T)
        kept.append(weights @ part.T)
    return np.concatenate(totals, -1), np.concatenate(kept, -1)


def row_sums(ds: xr.Dataset, top_token: np.ndarray, start_row: int) -> xr.Dataset:
    """Per head and row, logit_diff summed over the row's tokens and over the row's top tokens
    of the head (float32, as AtP's exact side sums them: stages.atp)."""
    values = ds.logit_diff.transpose("layer", "head", "batch", "pos").values
    mask = shard_top_mask(top_token, start_row, ds.sizes["batch"], ds.sizes["pos"])
    dims = ("layer", "head", "batch")
    return xr.Dataset(
        {
            "row_logit_diff": (dims, values.sum(-1)),
            "top_row_logit_diff": (dims, np.where(mask, values, 0.0).sum(-1)),
        }
    )


def candidate_tokens(ds: xr.Dataset, k: int, context: int) -> xr.Dataset:
    """Per head and explorer ranking (RANKED_BY), the shard's k best tokens: global row, pos,
    the CANDIDATE_VALUES there and the WINDOWED values over the `context` tokens ending there
    (left-aligned, NaN past the window). Ranked within the shard as merge_candidates ranks
    across shards, so the merge is the ranking of all tokens (ties by row, then pos)."""
    n_layers, n_heads = ds.sizes["layer"], ds.sizes["head"]
    rows = ds["batch"].values
    per = {
        key: ds[name].transpose("layer", "head", "batch", "pos").values
        for key, name in CANDIDATE_VALUES.items()
    }
    shape = (n_layers, n_heads, len(RANKED_BY), k)
    row = np.full(shape, -1, np.int64)
    pos = np.full(shape, -1, np.int64)
    value = {key: np.full(shape, np.nan, np.float32) for key in CANDIDATE_VALUES}
    window = {key: np.full((*shape, context), np.nan, np.float32) for key in WINDOWED}
    for layer in range(n_layers):
        for head in range(n_heads):
            for r, key in enumerate(RANKED_BY):
                for c, (b, p) in enumerate(explorer.top_positions(per[key][layer, head], k)):
                    row[layer, head, r, c], pos[layer, head, r, c] = rows[b], p
                    for name in CANDIDATE_VALUES:
                        value[name][layer, head, r, c] = per[name][layer, head, b, p]
                    start = max(0, p - context + 1)
                    for name in WINDOWED:
                        span = per[name][layer, head, b, start : p + 1]
                        window[name][layer, head, r, c, : span.size] = span
    dims = ("layer", "head", "ranking", "candidate")
    out = {"cand_row": (dims, row), "cand_pos": (dims, pos)}
    out |= {f"cand_{key}": (dims, v) for key, v in value.items()}
    out |= {f"cand_window_{key}": ((*dims, "window"), w) for key, w in window.items()}
    return xr.Dataset(out, coords={"ranking": list(RANKED_BY)})


def merge_candidates(shards: Sequence[xr.Dataset], k: int) -> xr.Dataset:
    """The k best of every shard's candidate_tokens, per head and ranking: the global ranking
    (value high to low, ties by row, then pos), as one candidate_tokens Dataset."""
    both = xr.concat(list(shards), "candidate")
    rankings = list(both.ranking.values)
    value = np.stack([both[f"cand_{key}"].sel(ranking=key).values for key in rankings], 2)
    row, pos = both.cand_row.values, both.cand_pos.values
    score = np.where(row >= 0, value.astype(np.float64), -np.inf)
    # lexsort: the last key first: score high to low, then row, then pos
    order = np.lexsort((pos, row, -score), axis=-1)[..., :k]
    out = {}
    for name, da in both.data_vars.items():
        index = order.reshape(order.shape + (1,) * (da.ndim - 4))
        out[name] = (da.dims, np.take_along_axis(da.values, index, 3))
    return xr.Dataset(out, coords={"ranking": rankings})


def kept_heads(ds: xr.Dataset, heads: Sequence[Sequence[int]]) -> xr.Dataset:
    """Every head variable on every token of the given heads (dims kept, batch, pos; coords
    kept_layer, kept_head): what a `top` shard keeps of the heads per-token figures read."""
    heads = sorted({(int(layer), int(head)) for layer, head in heads})
    if not heads:  # none: no kept_* variables (a zero-length axis is no Zarr chunk)
        return xr.Dataset()
    layer = xr.DataArray([h[0] for h in heads], dims="kept")
    head = xr.DataArray([h[1] for h in heads], dims="kept")
    out = xr.Dataset(
        {f"kept_{name}": ds[name].isel(layer=layer, head=head) for name in HEAD_VARIABLES}
    )
    out = out.drop_vars(["layer", "head"], errors="ignore")
    return out.assign_coords(kept_layer=("kept", layer.values), kept_head=("kept", head.values))


def _kept_index(ds: xr.Dataset) -> dict[tuple[int, int], int]:
    """(layer, head) -> its index on the `kept` axis of a `top` shard (empty: none kept)."""
    if "kept_layer" not in ds.coords:
        return {}
    pairs = zip(ds.kept_layer.values.tolist(), ds.kept_head.values.tolist(), strict=True)
    return {pair: i for i, pair in enumerate(pairs)}


def head_values(ds: xr.Dataset, layer: int, head: int, names: Sequence[str]) -> xr.Dataset | None:
    """One head's per-token variables (dims batch, pos) from a shard of either layout; None when
    a `top` shard did not keep the head's every token."""
    if layout_of(ds) == "all":
        one = ds[list(names)].isel(layer=layer, head=head)
        return one.drop_vars(["layer", "head"], errors="ignore")
    index = _kept_index(ds).get((int(layer), int(head)))
    if index is None:
        return None
    one = ds[[f"kept_{n}" for n in names]].isel(kept=index)
    one = one.drop_vars(["kept", "kept_layer", "kept_head"], errors="ignore")
    return one.rename({f"kept_{n}": n for n in names})


def self_repair_bootstrap(
    ds: xr.Dataset, offset: int, n_tokens: int, n_resamples: int, seed: int
) -> xr.Dataset:
    """bootstrap_sums of every head's self_repair (`boot_total`, `boot_kept`: dims layer, head,
    resample), the parts of mean_self_repair's interval."""
    values = flat_tokens(ds.self_repair)
    total, kept = bootstrap_sums(
        values.reshape(-1, values.shape[-1]), offset, n_tokens, n_resamples, seed
    )
    dims = ("layer", "head", "resample")
    shape = (*values.shape[:2], -1)
    return xr.Dataset(
        {"boot_total": (dims, total.reshape(shape)), "boot_kept": (dims, kept.reshape(shape))},
        attrs={"boot_n_tokens": n_tokens, "boot_resamples": n_resamples, "boot_seed": seed},
    )


def summary_parts(
    ds: xr.Dataset, top_token: np.ndarray, *, n_tokens: int, n_resamples: int, seed: int
) -> xr.Dataset:
    """What summarize_heads reads of one shard (dims layer, head, ...): top_values, token_sums
    and self_repair_bootstrap, from its per-token values (ds: dims layer, head, batch, pos,
    batch numbered by global row)."""
    start_row = int(ds["batch"].values[0])
    offset = start_row * ds.sizes["pos"]
    parts = [
        top_values(ds, top_token, start_row),
        token_sums(ds),
        self_repair_bootstrap(ds, offset, n_tokens, n_resamples, seed),
    ]
    return xr.merge(parts, combine_attrs="no_conflicts")


def top_layout(
    ds: xr.Dataset,
    top_token: np.ndarray,
    *,
    n_tokens: int,
    n_resamples: int,
    seed: int,
    heads: Sequence[Sequence[int]],
    k: int,
    context: int,
) -> xr.Dataset:
    """What a shard keeps under engine.store_tokens: top, from its per-token values: the
    summary parts, the per-row logit sums, the explorer's candidates, every token of `heads`,
    and the per-token values that are not per head (logit_clean, ln_scale_clean), with ds's
    coordinates along batch and its attributes."""
    start_row = int(ds["batch"].values[0])
    parts = [
        summary_parts(ds, top_token, n_tokens=n_tokens, n_resamples=n_resamples, seed=seed),
        row_sums(ds, top_token, start_row),
        candidate_tokens(ds, k, context),
        kept_heads(ds, heads),
        ds[[name for name in ds.data_vars if name not in HEAD_VARIABLES]],
    ]
    out = xr.merge(parts, combine_attrs="drop")
    out = out.assign_coords({d: ds[d] for d in ("layer", "head", "pos") if d in ds.coords})
    out.attrs.update(ds.attrs)
    out.attrs.update(parts[0].attrs, **{LAYOUT: "top"})
    return out


def as_per_token(ds: xr.Dataset, names: Sequence[str]) -> xr.Dataset:
    """The head variables `names` of a shard of either layout with dims (layer, head, batch,
    pos), lazily: a `top` shard's heads not kept per token are NaN (never computed unless
    read), so readers of a few heads (reduce.head_tokens, mechanisms.norms) read both alike."""
    if layout_of(ds) == "all":
        return ds[list(names)]
    import dask.array as da

    n_layers, n_heads = ds.sizes["layer"], ds.sizes["head"]
    shape = (ds.sizes["batch"], ds.sizes["pos"])
    kept = _kept_index(ds)
    out = {}
    for name in names:
        source = ds[f"kept_{name}"].chunk({"kept": 1}).data if kept else None
        blocks = [
            [
                source[kept[(layer, head)]]
                if (layer, head) in kept
                else da.full(shape, np.nan, dtype=np.float32)
                for head in range(n_heads)
            ]
            for layer in range(n_layers)
        ]
        out[name] = (("layer", "head", "batch", "pos"), da.stack([da.stack(b) for b in blocks]))
    coords = {c: ds[c] for c in ds.coords if set(ds[c].dims) <= {"layer", "head", "batch", "pos"}}
    return xr.Dataset(out, coords=coords, attrs=ds.attrs)


def not_kept(stores: Sequence[xr.Dataset], heads: Sequence[Sequence[int]]) -> list:
    """The heads among `heads` whose every token some `top` shard did not keep."""
    missing = set()
    for ds in stores:
        if layout_of(ds) == "all":
            continue
        missing |= {(int(layer), int(head)) for layer, head in heads} - set(_kept_index(ds))
    return sorted(missing)


def stored_values(ds: xr.Dataset, name: str, layer: int, head: int) -> np.ndarray:
    """float [batch, pos]: what a shard store of either layout holds of one head variable of one
    head, NaN where it keeps nothing (a `top` shard: the head's top tokens, or every token of a
    head it keeps per token)."""
    if (one := head_values(ds, layer, head, [name])) is not None:
        return one[name].values
    n_rows, n_pos = ds.sizes["batch"], ds.sizes["pos"]
    out = np.full(n_rows * n_pos, np.nan, np.float32)
    token = ds.top_token.values[layer, head]
    inside = token >= 0
    out[token[inside] - int(ds["batch"].values[0]) * n_pos] = ds[f"top_{name}"].values[layer, head][
        inside
    ]
    return out.reshape(n_rows, n_pos)
