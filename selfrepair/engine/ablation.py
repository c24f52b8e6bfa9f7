"""Forward passes for the mechanism experiments (neurons, norms, self-reinforcement).

They follow the engine's conventions so that their numbers line up with its stores:
- the ablated z of a head is taken as engine.measure_heads takes it (resample: row (i + 1) mod n
  of the tokens passed, same position; mean: mean z over all their rows and positions; zero);
- an ablated pass restarts from the clean residual stream right after the ablated layer's
  attention (forward.restart_point), so only what reads the head's output is recomputed.

What they add is the choice of activations to keep (any hook by name), in the clean pass and in
the rerun, and reruns from any point of a layer (resid_pre for the self-reinforcement edit).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import torch
from jaxtyping import Float, Int
from torch import Tensor

from selfrepair.engine.self_repair import mean_z, resample_source
from selfrepair.models.forward import CleanPass, check_finite, clean_pass, restart_point
from selfrepair.models.readout import Readout
from selfrepair.variables import ABLATIONS

POINTS = ("resid_pre", "resid_mid", "resid_post")


def keeping(names: Iterable[str], store: dict[str, Tensor]) -> list[tuple[str, object]]:
    """Hooks that store the activation of each named hook point in `store` (by name)."""

    def keep(x, hook):
        store[hook.name] = x

    return [(name, keep) for name in names]


@dataclass
class AblationChunk:
    """One batch of rows: its clean pass, the ablated z of every head of the asked layers, and
    the clean activations asked for by hook name."""

    rows: Int[Tensor, " batch"]  # indices into the tokens passed to ablation_chunks
    cp: CleanPass
    z_new: dict[int, Float[Tensor, "batch pos head d_head"]]
    kept: dict[str, Tensor]


def ablation_chunks(
    model,
    tokens: Int[Tensor, "rows pos_plus_1"],
    ablation: str,
    layers: Iterable[int],
    ro: Readout,
    *,
    batch_size: int,
    mean_include_bos: bool = True,
    keep: Iterable[str] = (),
    restart_layers: Iterable[int] | None = None,
) -> Iterator[AblationChunk]:
    """Clean passes over `tokens` in batches of rows, with each head's ablated z as the engine
    takes it over the same `tokens` (so pass one shard to match a shard of the engine).

    layers: layers whose z (clean and ablated) is needed. restart_layers: layers whose restart
    residual is kept (default: `layers`). keep: extra hook names kept from the clean pass.
    """
    if ablation not in ABLATIONS:
        raise ValueError(f"unknown ablation {ablation!r}: choose one of {', '.join(ABLATIONS)}")
    layers = sorted(set(layers))
    restart_layers = set(layers if restart_layers is None else restart_layers)
    keep = list(keep)
    device = model.W_U.device
    tokens = tokens.to(device=device, dtype=torch.long)
    n_rows = tokens.shape[0]
    source = resample_source(n_rows)
    if ablation == "resample" and n_rows < 2:
        raise ValueError("resample ablation needs at least 2 rows to take z from another row")
    z_mean = (
        mean_z(model, tokens, layers, batch_size, mean_include_bos) if ablation == "mean" else {}
    )

    with torch.no_grad():
        for start in range(0, n_rows, batch_size):
            rows = torch.arange(start, min(start + batch_size, n_rows))
            run_rows = rows
            if ablation == "resample":
                extra = sorted(set(source[rows].tolist()) - set(rows.tolist()))
                run_rows = torch.cat([rows, torch.tensor(extra, dtype=torch.long)])
            kept: dict[str, Tensor] = {}
            with model.hooks(fwd_hooks=keeping(keep, kept)):
                cp = clean_pass(
                    model, tokens[run_rows.to(device)], ro, set(layers), restart_layers, run_rows
                )
            n = len(rows)
            if ablation == "resample":
                where = {r: i for i, r in enumerate(run_rows.tolist())}
                src = torch.tensor([where[s] for s in source[rows].tolist()], device=device)
            z_new = {}
            for layer in layers:
                z = cp.z[layer]
                if ablation == "resample":
                    z_new[layer] = z[src]
                elif ablation == "mean":
                    z_new[layer] = z_mean[layer].expand_as(z[:n])
                else:
                    z_new[layer] = torch.zeros_like(z[:n])
            yield AblationChunk(rows=rows, cp=first_rows(cp, n), z_new=z_new, kept=_head(kept, n))


def _head(d: dict[str, Tensor], n: int) -> dict[str, Tensor]:
    return {k: v[:n] for k, v in d.items()}


def first_rows(cp: CleanPass, n: int) -> CleanPass:
    """The first n rows of a clean pass (the rest were only run for their resample z)."""
    return CleanPass(
        u=cp.u[:n],
        const=cp.const[:n],
        scale=cp.scale[:n],
        logit=cp.logit[:n],
        attn_dot=_head(cp.attn_dot, n),
        mlp_dot=_head(cp.mlp_dot, n),
        z=_head(cp.z, n),
        restart=_head(cp.restart, n),
        norm_scale=_head(cp.norm_scale, n),
    )


def finish_from(
    model,
    layer: int,
    point: str,
    resid: Float[Tensor, "batch pos d_model"],
    keep: Iterable[str] = (),
    rows: Tensor | None = None,
) -> tuple[Float[Tensor, "batch pos d_model"], dict[str, Tensor]]:
    """The final residual stream of a forward pass resumed from `resid` at `point` of `layer`
    (resid_pre: the whole block runs; resid_mid: its MLP and the later blocks; resid_post: the
    later blocks), and the activations named in `keep` met on the way."""
    if point not in POINTS:
        raise ValueError(f"unknown point {point!r}: choose one of {', '.join(POINTS)}")
    if point == "resid_mid" and (model.cfg.parallel_attn_mlp or model.cfg.attn_only):
        raise ValueError("resid_mid exists only in sequential blocks with an MLP")
    kept: dict[str, Tensor] = {}
    first = layer if point == "resid_pre" else layer + 1
    rows = torch.arange(resid.shape[0]) if rows is None else rows
    with torch.no_grad(), model.hooks(fwd_hooks=keeping(keep, kept)):
        if point == "resid_mid":
            block = model.blocks[layer]
            resid = resid + block.apply_mlp(block.ln2(resid))
        for later in range(first, model.cfg.n_layers):
            resid = model.blocks[later](resid)
            check_finite(resid, f"the residual stream after layer {later}", rows)
    return resid, kept


def head_output(
    model, z: Float[Tensor, "batch pos head d_head"], layer: int, head: int
) -> Float[Tensor, "batch pos d_model"]:
    """A head's output z W_O (no bias: b_O is shared by the layer's heads)."""
    return torch.einsum("bpd,dm->bpm", z[:, :, head], model.blocks[layer].attn.W_O[head])


def ablated_final(
    model,
    chunk: AblationChunk,
    layer: int,
    head: int,
    keep: Iterable[str] = (),
) -> tuple[Float[Tensor, "batch pos d_model"], dict[str, Tensor]]:
    """Final residual (and kept activations) of the run where only `head` of `layer` is ablated,
    restarted right after that layer's attention from the chunk's clean residual stream."""
    cp = chunk.cp
    n = len(chunk.rows)
    delta = head_output(model, chunk.z_new[layer][:n] - cp.z[layer], layer, head)
    point = restart_point(model)
    return finish_from(model, layer, point, cp.restart[layer] + delta, keep, chunk.rows)
