"""Neuron-level self-repair (paper Figs 7, 8, 15): per-token direct effects of every neuron of
one MLP layer, clean and with one head ablated.

The direct effect of neuron n at token t, with post-activation a_n, output row W_out[n], the
correct-token direction u (readout.py, already centred) and the clean final-LN scale s, is

    DE_n = a_n (W_out[n] . u) / s

in the clean run and in the ablated run alike (the ablated run keeps the clean scale, as every
direct effect here does). Summed over n it is the layer's direct effect minus its bias term
b_out . u / s. A neuron's self-repair is its ablated minus its clean DE.

Storing every neuron on every token would take d_mlp floats per token, head and run, so only the
top fraction of tokens is kept, twice: by the head's clean DE ("head_de", Figs 8, 15) and by the
MLP layer's self-repair, i.e. its ablated minus clean DE ("mlp_repair", Fig 7). Tokens are
streamed and the running top set updated in place, so memory is that of the kept tokens.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from typing import TYPE_CHECKING

import numpy as np
import torch
import xarray as xr
from jaxtyping import Float, Int
from torch import Tensor

from selfrepair.analysis.mechanisms import at_selected
from selfrepair.config.layout import top_count
from selfrepair.engine.ablation import AblationChunk, ablated_final, ablation_chunks
from selfrepair.engine.inputs import validate_tokens
from selfrepair.mechanisms.probes import Probe, out_hook, post_hook, probe_coords, resolve_probes
from selfrepair.mechanisms.top_tokens import TopTokens
from selfrepair.models.forward import check_supported, dot
from selfrepair.models.readout import Readout, readout

if TYPE_CHECKING:
    from transformer_lens import HookedTransformer

__all__ = [
    "PER_NEURON",
    "PER_TOKEN",
    "SELECTIONS",
    "Probe",
    "TopTokens",
    "chunk_neuron_effects",
    "head_direct_effect",
    "neuron_chunks",
    "neuron_direct_effects",
    "neuron_readout",
    "resolve_probes",
    "select_neuron_tokens",
    "stored_selection",
    "sum_error",
]

SELECTIONS = ("head_de", "mlp_repair")
PER_TOKEN = ("de_clean", "de_ablated", "mlp_de_clean", "mlp_de_ablated", "mlp_bias_de")
PER_NEURON = ("neuron_de_clean", "neuron_de_ablated")
STORE_TOKENS = ("top", "all")  # the values of config key engine.store_tokens


def neuron_readout(
    model: HookedTransformer,
    mlp_layer: int,
    u: Float[Tensor, "batch pos d_model"],
    scale: Float[Tensor, "batch pos"],
) -> Float[Tensor, "batch pos d_mlp"]:
    """Direct effect per unit post-activation of each neuron: (W_out[n] . u) / s."""
    w_out = model.blocks[mlp_layer].mlp.W_out.float()  # [d_mlp, d_model]
    return torch.einsum("nm,bpm->bpn", w_out, u) / scale[..., None]


def head_direct_effect(
    model: HookedTransformer,
    z: Float[Tensor, "batch pos head d_head"],
    layer: int,
    head: int,
    u: Float[Tensor, "batch pos d_model"],
    scale: Float[Tensor, "batch pos"],
) -> Float[Tensor, "batch pos"]:
    """z W_O[head] . u / s, through W_O . u (never a [batch, pos, d_model] head output)."""
    v = torch.einsum("dm,bpm->bpd", model.blocks[layer].attn.W_O[head].float(), u)
    return torch.einsum("bpd,bpd->bp", z[:, :, head].float(), v) / scale


def chunk_neuron_effects(
    model: HookedTransformer, chunk: AblationChunk, probes: Sequence[Probe]
) -> dict[Probe, dict[str, Tensor]]:
    """Per probe, on one chunk: the head's clean and ablated DE, the MLP layer's clean and
    ablated DE and its bias term ([batch, pos]), and every neuron's clean and ablated DE
    ([batch, pos, d_mlp]); all float32, on the model's device."""
    cp = chunk.cp
    u, s = cp.u, cp.scale
    clean: dict[int, dict[str, Tensor]] = {}
    for m in sorted({p.mlp_layer for p in probes}):
        w = neuron_readout(model, m, u, s)
        clean[m] = {
            "w": w,
            "neuron_de_clean": chunk.kept[post_hook(m)].float() * w,
            "mlp_de_clean": cp.mlp_dot[m] / s,
            "mlp_bias_de": dot(model.blocks[m].mlp.b_out, u) / s,
        }
    out = {}
    for p in probes:
        c = clean[p.mlp_layer]
        m = p.mlp_layer
        _, kept = ablated_final(model, chunk, p.layer, p.head, [post_hook(m), out_hook(m)])
        out[p] = {
            "de_clean": head_direct_effect(model, cp.z[p.layer], p.layer, p.head, u, s),
            "de_ablated": head_direct_effect(model, chunk.z_new(p.layer), p.layer, p.head, u, s),
            "mlp_de_clean": c["mlp_de_clean"],
            # The layer's own output, not the sum of its neurons: the invariant
            # sum(neurons) + bias == layer DE is then a real check (tests, sum_error).
            "mlp_de_ablated": dot(kept[out_hook(m)], u) / s,
            "mlp_bias_de": c["mlp_bias_de"],
            "neuron_de_clean": c["neuron_de_clean"],
            "neuron_de_ablated": kept[post_hook(m)].float() * c["w"],
        }
    return out


def neuron_chunks(
    model: HookedTransformer,
    tokens: Int[Tensor, "rows pos_plus_1"],
    ablation: str,
    probes: Sequence[Probe],
    *,
    ro: Readout | None = None,
    batch_size: int | None = None,
    mean_include_bos: bool = True,
) -> Iterator[tuple[Int[Tensor, " batch"], dict[Probe, dict[str, Tensor]]]]:
    """(rows, chunk_neuron_effects) for each batch of rows of `tokens`; ablation as the engine
    does it over `tokens` (pass one shard to match one shard of the engine)."""
    check_supported(model)
    validate_tokens(model, tokens)
    ro = ro or readout(model)
    chunks = ablation_chunks(
        model,
        tokens,
        ablation,
        {p.layer for p in probes},
        ro,
        batch_size=batch_size or tokens.shape[0],
        mean_include_bos=mean_include_bos,
        keep=[post_hook(m) for m in {p.mlp_layer for p in probes}],
    )
    for chunk in chunks:
        with torch.no_grad():
            effects = chunk_neuron_effects(model, chunk, probes)
        yield chunk.rows, effects


def neuron_direct_effects(
    model: HookedTransformer,
    tokens: Int[Tensor, "rows pos_plus_1"],
    ablation: str,
    probes: Sequence[Probe],
    *,
    batch_size: int | None = None,
    mean_include_bos: bool = True,
) -> xr.Dataset:
    """Every neuron on every token (dims head, batch, pos, neuron): for small inputs and tests;
    the workflow keeps only selected tokens (select_neuron_tokens).

    Args:
        model: the HookedTransformer (not modified).
        tokens: [rows, pos + 1] token ids; ablation as the engine does it over these rows.
        ablation: a running-text kind (selfrepair.ablations.TEXT_ABLATIONS).
        probes: the heads and MLP layers (resolve_probes).
        batch_size: rows per clean pass (default: all).
        mean_include_bos: whether the mean z includes position 0.
    """
    n_rows, n_pos = tokens.shape[0], tokens.shape[1] - 1
    d_mlp = model.cfg.d_mlp
    out = {v: np.zeros((len(probes), n_rows, n_pos), np.float32) for v in PER_TOKEN}
    out |= {v: np.zeros((len(probes), n_rows, n_pos, d_mlp), np.float32) for v in PER_NEURON}
    opts = {"batch_size": batch_size, "mean_include_bos": mean_include_bos}
    for rows, effects in neuron_chunks(model, tokens, ablation, probes, **opts):
        for i, p in enumerate(probes):
            for name, value in effects[p].items():
                out[name][i, rows.numpy()] = value.cpu().numpy()
    data = {v: (("head", "batch", "pos"), out[v]) for v in PER_TOKEN}
    data |= {v: (("head", "batch", "pos", "neuron"), out[v]) for v in PER_NEURON}
    coords = probe_coords(probes) | {
        "batch": np.arange(n_rows),
        "pos": np.arange(n_pos),
        "neuron": np.arange(d_mlp),
    }
    return xr.Dataset(data, coords=coords, attrs={"ablation": ablation})


def offer_chunk(
    tops: dict[tuple[Probe, str], TopTokens],
    probes: Sequence[Probe],
    effects: dict[Probe, dict[str, Tensor]],
    flat_index: Int[Tensor, " tokens"],
) -> None:
    """Offer one chunk's tokens to each probe's top sets, scored by the head's clean DE
    ("head_de") and by its MLP layer's self-repair ("mlp_repair")."""
    for p in probes:
        e = effects[p]
        neurons = {v: e[v].flatten(0, 1) for v in PER_NEURON}
        scores = {
            "head_de": e["de_clean"],
            "mlp_repair": e["mlp_de_ablated"] - e["mlp_de_clean"],
        }
        for sel, score in scores.items():
            tops[p, sel].offer(score.flatten(), flat_index, neurons)


def stream_shards(
    model: HookedTransformer,
    shards: Iterable[tuple[int, Int[Tensor, "rows pos_plus_1"]]],
    ablation: str,
    probes: Sequence[Probe],
    tops: dict[tuple[Probe, str], TopTokens],
    **opts,
) -> tuple[dict[str, list[np.ndarray]], list[np.ndarray], int | None, int]:
    """Run neuron_chunks over each shard, offering every chunk to `tops`; returns the per-token
    arrays per chunk, the global rows per chunk, the positions per row and the tokens seen."""
    per_token: dict[str, list[np.ndarray]] = {v: [] for v in PER_TOKEN}
    row_ids: list[np.ndarray] = []
    seen = 0
    n_pos = None
    for first_row, rows_tokens in shards:
        n_pos = rows_tokens.shape[1] - 1
        for rows, effects in neuron_chunks(model, rows_tokens, ablation, probes, **opts):
            global_rows = first_row + rows
            row_ids.append(global_rows.numpy())
            flat_index = (global_rows[:, None] * n_pos + torch.arange(n_pos)).flatten()
            for name in PER_TOKEN:
                per_token[name].append(np.stack([effects[p][name].cpu().numpy() for p in probes]))
            offer_chunk(tops, probes, effects, flat_index)
            seen += rows.numel() * n_pos
    return per_token, row_ids, n_pos, seen


def selected_arrays(
    tops: dict[tuple[Probe, str], TopTokens],
    probes: Sequence[Probe],
    k: int,
    n_pos: int,
    d_mlp: int,
) -> dict[str, tuple[tuple[str, ...], np.ndarray]]:
    """token_row, token_pos, score (head, selection, token) and the neuron DEs (head, selection,
    token, neuron) of the top sets, each set in token order."""
    token_row = np.zeros((len(probes), len(SELECTIONS), k), np.int64)
    token_pos = np.zeros_like(token_row)
    score = np.zeros(token_row.shape, np.float32)
    neuron = {v: np.zeros((*token_row.shape, d_mlp), np.float32) for v in PER_NEURON}
    for i, p in enumerate(probes):
        for j, sel in enumerate(SELECTIONS):
            index, sc, values = tops[p, sel].in_token_order()
            token_row[i, j], token_pos[i, j] = np.divmod(index, n_pos)
            score[i, j] = sc
            for v in PER_NEURON:
                neuron[v][i, j] = values[v]
    dims3 = ("head", "selection", "token")
    data = {
        "token_row": (dims3, token_row),
        "token_pos": (dims3, token_pos),
        "score": (dims3, score),
    }
    return data | {v: ((*dims3, "neuron"), neuron[v]) for v in PER_NEURON}


def select_neuron_tokens(
    model: HookedTransformer,
    shards: Iterable[tuple[int, Int[Tensor, "rows pos_plus_1"]]],
    ablation: str,
    probes: Sequence[Probe],
    *,
    n_tokens: int,
    top_fraction: float = 0.02,
    batch_size: int | None = None,
    mean_include_bos: bool = True,
) -> xr.Dataset:
    """Stream shards of token rows, ablating within each shard as the engine does, and keep
    neuron DEs only on each head's top tokens by clean DE ("head_de") and by its MLP layer's
    self-repair ("mlp_repair").

    Args:
        model: the HookedTransformer (not modified).
        shards: (first global row, [rows, pos + 1] tokens) per shard.
        ablation: a running-text kind (selfrepair.ablations.TEXT_ABLATIONS), applied within
            each shard.
        probes: the heads and MLP layers (resolve_probes).
        n_tokens: total predictions over all shards (to size the top sets).
        top_fraction: share of tokens kept per head and selection.
        batch_size: rows per clean pass (default: a whole shard).
        mean_include_bos: whether the mean z includes position 0.

    Returns:
        Per-token scalars (head, batch, pos) for all tokens, and per selected token (head,
        selection, token): token_row, token_pos, score, and (head, selection, token, neuron)
        neuron_de_clean/ablated.
    """
    k = top_count(n_tokens, top_fraction)
    d_mlp = model.cfg.d_mlp
    tops = {
        (p, sel): TopTokens(k, {v: d_mlp for v in PER_NEURON}) for p in probes for sel in SELECTIONS
    }
    opts = {"batch_size": batch_size, "mean_include_bos": mean_include_bos, "ro": readout(model)}
    per_token, row_ids, n_pos, seen = stream_shards(model, shards, ablation, probes, tops, **opts)
    if seen != n_tokens:
        raise ValueError(f"n_tokens is {n_tokens} but the shards held {seen} predictions")

    data = {v: (("head", "batch", "pos"), np.concatenate(per_token[v], 1)) for v in PER_TOKEN}
    data |= selected_arrays(tops, probes, k, n_pos, d_mlp)
    coords = probe_coords(probes) | {
        "selection": list(SELECTIONS),
        "batch": np.concatenate(row_ids),
        "pos": np.arange(n_pos),
        "token": np.arange(k),
        "neuron": np.arange(d_mlp),
    }
    attrs = {
        "ablation": ablation,
        "top_fraction": top_fraction,
        "n_tokens": n_tokens,
        "selections": "head_de: top tokens by the head's clean DE; mlp_repair: top tokens by "
        "the MLP layer's self-repair (ablated - clean DE)",
        "logits": "centred over the vocabulary; direct effects use the clean final-LN scale",
    }
    return xr.Dataset(data, coords=coords, attrs=attrs)


def stored_selection(ds: xr.Dataset, store_tokens: str) -> xr.Dataset:
    """What selected.zarr keeps of a select_neuron_tokens dataset: all of it under
    engine.store_tokens: all; under top all but the PER_NEURON arrays (d_mlp floats per head,
    selection and selected token: about 1 GB per head at the paper's size), which only the
    reductions read and which the neuron_effects job reduces before writing."""
    if store_tokens not in STORE_TOKENS:
        raise ValueError(f"store_tokens must be one of {STORE_TOKENS}, got {store_tokens!r}")
    return ds if store_tokens == "all" else ds.drop_vars(PER_NEURON)


def sum_error(ds: xr.Dataset) -> float:
    """max |sum of neuron DEs + bias term - MLP layer DE| over heads, tokens and both runs, on
    a dataset of every token (neuron_direct_effects) or of selected ones (select_neuron_tokens)."""
    selected = "token" in ds.dims

    def per_token(name):
        return at_selected(ds, name) if selected else ds[name]

    err = 0.0
    for run in ("clean", "ablated"):
        total = ds[f"neuron_de_{run}"].sum("neuron") + per_token("mlp_bias_de")
        err = max(err, float(np.abs(total - per_token(f"mlp_de_{run}")).max()))
    return err
