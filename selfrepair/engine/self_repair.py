"""Per-head self-repair under resample, mean and zero ablation (paper Eq. 1 and 2).

One clean pass per batch of rows; then, per layer, the heads of that layer are ablated together
(stacked along the batch dimension) in passes that restart from the cached clean residual stream
right after the ablated attention layer, so neither the embedding, the layers below, nor the
attention of the ablated layer is recomputed, and no full unembedding is ever done.

For ablated head h of layer l, with clean final-LN scale s, ablated scale s', correct-token
direction u (see readout.py) and final residuals x (clean) and x' (ablated):

    logit_diff  = (x'.u/s' + c) - (x.u/s + c)
    de_clean    = z_h W_O[h] . u / s             de_ablated = z'_h W_O[h] . u / s
    self_repair = logit_diff - (de_ablated - de_clean)                              (Eq. 1)
    sr_heads    = sum over layers > l of (attn_out' - attn_out) . u / s
    sr_mlps     = sum over MLP layers downstream of h of (mlp_out' - mlp_out) . u / s
    sr_ln       = x'.u (1/s' - 1/s)                                                 (Eq. 2)

Each part is computed on its own, so sr_heads + sr_mlps + sr_ln == self_repair is a real check.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from functools import partial

import numpy as np
import torch
import xarray as xr
from jaxtyping import Float, Int
from torch import Tensor
from tqdm.auto import tqdm

from selfrepair.models.blocks import cached_weights, run_block, run_mlp
from selfrepair.models.forward import (
    CleanPass,
    check_finite,
    check_supported,
    clean_pass,
    dot,
    embed,
    restart_point,
)
from selfrepair.models.readout import Readout, readout
from selfrepair.variables import ABLATIONS, HEAD_VARIABLES


def normalize_heads(model, heads: Iterable[Sequence[int]] | None) -> dict[int, list[int]]:
    """{layer: sorted heads}; all heads when None. Out-of-range heads fail naming the model size."""
    n_layers, n_heads = model.cfg.n_layers, model.cfg.n_heads
    if heads is None:
        return {layer: list(range(n_heads)) for layer in range(n_layers)}
    by_layer: dict[int, set[int]] = {}
    for pair in heads:
        layer, head = (int(x) for x in pair)
        if not (0 <= layer < n_layers and 0 <= head < n_heads):
            raise ValueError(
                f"head L{layer}H{head} is out of range: {model.cfg.model_name} has {n_layers} "
                f"layers of {n_heads} heads (layers and heads count from 0)"
            )
        by_layer.setdefault(layer, set()).add(head)
    if not by_layer:
        raise ValueError("heads is empty: pass None for all heads or a list of (layer, head)")
    return {layer: sorted(hs) for layer, hs in sorted(by_layer.items())}


def validate_tokens(model, tokens: Tensor) -> None:
    if (
        not isinstance(tokens, Tensor)
        or tokens.dim() != 2
        or tokens.dtype
        not in (
            torch.int64,
            torch.int32,
        )
    ):
        raise TypeError("tokens must be an integer tensor of shape [batch, pos]")
    if tokens.shape[1] < 2:
        raise ValueError("tokens need at least 2 positions (position t predicts token t+1)")
    if tokens.shape[1] - 1 > model.cfg.n_ctx:
        raise ValueError(
            f"rows of {tokens.shape[1]} tokens exceed the context of {model.cfg.model_name} "
            f"({model.cfg.n_ctx}): lower data.seq_len"
        )
    if int(tokens.min()) < 0 or int(tokens.max()) >= model.cfg.d_vocab:
        raise ValueError(
            f"token ids must lie in [0, {model.cfg.d_vocab}); got {int(tokens.min())}.."
            f"{int(tokens.max())}: the tokens were made with another tokenizer"
        )


# On a CPU, a pass's largest activation is kept under this size: glibc's malloc serves blocks
# under 32 MiB from its heap and reuses them, while larger ones are mapped afresh and page-faulted
# in on every use (about a tenth of the engine's time at gpt2-small shapes).
CPU_PASS_BYTES = 24 * 2**20


def default_heads_per_pass(model, rows: int, n_pos: int) -> int:
    """Heads stacked per ablated pass when not given: all of a layer's on a GPU; on a CPU as many
    as keep the pass's widest activation ([heads x rows x pos, width]) within CPU_PASS_BYTES."""
    cfg = model.cfg
    if model.W_U.device.type != "cpu":
        return cfg.n_heads
    n_kv = cfg.n_key_value_heads or cfg.n_heads
    width = max(cfg.d_mlp or 0, (cfg.n_heads + 2 * n_kv) * cfg.d_head, cfg.d_model)
    per_head = rows * n_pos * width * model.W_U.element_size()
    return max(1, min(cfg.n_heads, CPU_PASS_BYTES // per_head))


def resample_source(n_rows: int) -> Int[Tensor, " batch"]:
    """The paper's resample partner: row i takes z from row (i + 1) mod n_rows, same position."""
    return (torch.arange(n_rows) + 1) % n_rows


def mean_z(
    model,
    tokens: Int[Tensor, "batch pos"],
    layers: Iterable[int],
    batch_size: int,
    include_bos: bool = True,
    fused: bool = True,
) -> dict[int, Float[Tensor, "head d_head"]]:
    """Mean of each head's z over all rows and positions of tokens (position 0 optional)."""
    layers = sorted(set(layers))
    sums: dict[int, Tensor] = {}
    count = 0
    first = 0 if include_bos else 1

    def add(x, hook, layer):
        sums[layer] = sums.get(layer, 0) + x[:, first:].float().sum((0, 1))

    hooks = [
        (f"blocks.{layer}.attn.hook_z", lambda x, hook, layer=layer: add(x, hook, layer))
        for layer in layers
    ]
    with torch.no_grad(), model.hooks(fwd_hooks=hooks):
        for start in range(0, tokens.shape[0], batch_size):
            chunk = tokens[start : start + batch_size]
            resid = embed(model, chunk)
            for block in model.blocks[: layers[-1] + 1]:
                resid = run_block(block, resid, fused)
            count += chunk.shape[0] * (chunk.shape[1] - first)
    return {layer: (s / count).to(model.cfg.dtype) for layer, s in sums.items()}


def _take(cp: CleanPass, n: int) -> CleanPass:
    """The first n rows of a clean pass (the rest were only run for their resample z)."""
    return CleanPass(
        u=cp.u[:n],
        const=cp.const[:n],
        scale=cp.scale[:n],
        logit=cp.logit[:n],
        attn_dot={k: v[:n] for k, v in cp.attn_dot.items()},
        mlp_dot={k: v[:n] for k, v in cp.mlp_dot.items()},
        z={k: v[:n] for k, v in cp.z.items()},
        restart={k: v[:n] for k, v in cp.restart.items()},
        norm_scale={k: v[:n] for k, v in cp.norm_scale.items()},
    )


def ablated_pass(
    model,
    ro: Readout,
    cp: CleanPass,
    layer: int,
    heads: list[int],
    z_new: Float[Tensor, "group batch pos d_head"],
    freeze_ln: bool = False,
    fused: bool = True,
) -> dict[str, Float[Tensor, "group batch pos"]]:
    """Replace z of each head in `heads` (one head per group entry) and finish the forward pass.

    Restarts from the clean residual stream right after the attention of `layer`, adding the
    head's change (z' - z) W_O; the stacked group shares every later block call. With freeze_ln
    every LayerNorm downstream (and the final one) divides by its clean scale instead of
    recomputing it, the remedy the paper suggests for LayerNorm self-repair.
    """
    g, b, p = z_new.shape[:3]
    block = model.blocks[layer]
    w_o = block.attn.W_O[heads]  # [group, d_head, d_model]
    z_clean = cp.z[layer][:, :, heads].permute(2, 0, 1, 3)  # [group, batch, pos, d_head]
    delta = torch.einsum("gbpd,gdm->gbpm", z_new - z_clean, w_o)
    resid = (cp.restart[layer].unsqueeze(0) + delta).reshape(g * b, p, -1)

    # Direct effects of the ablated head through W_O . u, never through [.., d_model] per head.
    v = torch.einsum("gdm,bpm->gbpd", w_o.float(), cp.u)  # [group, batch, pos, d_head]
    de_clean = torch.einsum("gbpd,gbpd->gbp", z_clean.float(), v) / cp.scale
    de_ablated = torch.einsum("gbpd,gbpd->gbp", z_new.float(), v) / cp.scale

    sr_heads = torch.zeros(g, b, p, device=cp.u.device)
    sr_mlps = torch.zeros(g, b, p, device=cp.u.device)

    def stacked_dot(x):
        return dot(x.reshape(g, b, p, -1), cp.u)

    def on_attn(x, hook, later):
        sr_heads.add_(stacked_dot(x) - cp.attn_dot[later])

    def on_mlp(x, hook, later):
        sr_mlps.add_(stacked_dot(x) - cp.mlp_dot[later])

    def clean_scale(x, hook, key):
        return cp.norm_scale[key].repeat(g, 1, 1)

    hooks = []
    for later in range(layer + 1, model.cfg.n_layers):
        prefix = f"blocks.{later}"
        hooks.append((f"{prefix}.hook_attn_out", partial(on_attn, later=later)))
        if not model.cfg.attn_only:
            hooks.append((f"{prefix}.hook_mlp_out", partial(on_mlp, later=later)))
    if freeze_ln:
        hooks += [(key, partial(clean_scale, key=key)) for key in frozen_norms(model, layer)]

    sequential = restart_point(model) == "resid_mid"
    with model.hooks(fwd_hooks=hooks):
        if sequential:  # the MLP of this layer reads the ablated stream
            mlp_out = run_mlp(block, resid, fused)
            sr_mlps += stacked_dot(mlp_out) - cp.mlp_dot[layer]
            resid = resid + mlp_out
        for later in range(layer + 1, model.cfg.n_layers):
            resid = run_block(model.blocks[later], resid, fused)

    x = resid.reshape(g, b, p, -1)
    scale_ablated = cp.scale.expand(g, b, p) if freeze_ln else ro.scale(x)
    xu = dot(x, cp.u)
    logit_diff = (xu / scale_ablated + cp.const) - cp.logit
    return {
        "logit_diff": logit_diff,
        "de_clean": de_clean,
        "de_ablated": de_ablated,
        "self_repair": logit_diff - (de_ablated - de_clean),
        "sr_heads": sr_heads / cp.scale,
        "sr_mlps": sr_mlps / cp.scale,
        "sr_ln": xu * (1.0 / scale_ablated - 1.0 / cp.scale),
        "ln_scale_ablated": scale_ablated,
    }


def frozen_norms(model, layer: int) -> list[str]:
    """hook_scale names of the norms an ablated pass of `layer` recomputes: ln2 of `layer` in a
    sequential block, ln1 and ln2 of every later block."""
    if model.cfg.normalization_type is None:
        return []
    names = [f"blocks.{layer}.ln2.hook_scale"] if restart_point(model) == "resid_mid" else []
    for later in range(layer + 1, model.cfg.n_layers):
        names.append(f"blocks.{later}.ln1.hook_scale")
        if not model.cfg.attn_only:
            names.append(f"blocks.{later}.ln2.hook_scale")
    return names


def measure_heads(
    model,
    tokens: Int[Tensor, "batch pos"],
    ablation: str = "resample",
    heads: Iterable[Sequence[int]] | None = None,
    *,
    batch_size: int | None = None,
    heads_per_pass: int | None = None,
    source: Int[Tensor, " batch"] | None = None,
    mean_include_bos: bool = True,
    freeze_ln: bool = False,
    fused: bool = True,
    progress: bool = False,
    desc: str | None = None,
) -> xr.Dataset:
    """Eq. 1 and 2 of the paper for every (or the given) head, per token.

    model: HookedTransformer (not modified). tokens: [batch, pos] rows, each starting with BOS.
    ablation: "resample" (z of row source[i], default (i + 1) mod batch, same position),
    "mean" (mean z over all rows and positions of tokens) or "zero".
    batch_size and heads_per_pass bound memory (rows per pass, heads stacked per pass); they
    never change a number. Defaults: all rows; heads per pass from default_heads_per_pass. freeze_ln: every LayerNorm after the ablated head keeps its clean
    scale (so sr_ln is 0 and the remaining self-repair is the heads' and MLPs').
    fused: run blocks with selfrepair.models.blocks' fused forward where it applies (same numbers to
    float tolerance, several times faster on a CPU); False runs TransformerLens' block modules.
    Returns dims layer, head, batch, pos (= tokens.shape[1] - 1).
    """
    if ablation not in ABLATIONS:
        raise ValueError(f"unknown ablation {ablation!r}: choose one of {', '.join(ABLATIONS)}")
    check_supported(model)
    validate_tokens(model, tokens)
    by_layer = normalize_heads(model, heads)
    layers = set(by_layer)
    n_rows, n_pos = tokens.shape[0], tokens.shape[1] - 1
    n_layers, n_heads = model.cfg.n_layers, model.cfg.n_heads
    batch_size = batch_size or n_rows
    heads_per_pass = heads_per_pass or default_heads_per_pass(model, batch_size, n_pos)
    device = model.W_U.device
    tokens = tokens.to(device=device, dtype=torch.long)
    ro = readout(model)

    if ablation == "resample":
        source = resample_source(n_rows) if source is None else torch.as_tensor(source).long()
        if source.shape != (n_rows,) or bool(((source < 0) | (source >= n_rows)).any()):
            raise ValueError(f"source must hold {n_rows} row indices in [0, {n_rows})")
        if n_rows < 2:
            raise ValueError("resample ablation needs at least 2 rows to take z from another row")
    z_mean = (
        mean_z(model, tokens, layers, batch_size, mean_include_bos, fused)
        if ablation == "mean"
        else None
    )

    out = {
        v: np.full((n_layers, n_heads, n_rows, n_pos), np.nan, np.float32) for v in HEAD_VARIABLES
    }
    logit_clean = np.empty((n_rows, n_pos), np.float32)
    scale_clean = np.empty((n_rows, n_pos), np.float32)

    n_chunks = -(-n_rows // batch_size)
    bar = tqdm(
        total=n_chunks * len(layers),
        desc=desc or "heads",
        unit="layer",
        disable=not progress,
        mininterval=5.0,
    )
    with torch.inference_mode(), cached_weights():
        for start in range(0, n_rows, batch_size):
            rows = torch.arange(start, min(start + batch_size, n_rows))
            run_rows = rows
            if ablation == "resample":
                extra = torch.tensor(
                    sorted(set(source[rows].tolist()) - set(rows.tolist())), dtype=torch.long
                )
                run_rows = torch.cat([rows, extra])
            cp_all = clean_pass(
                model,
                tokens[run_rows.to(device)],
                ro,
                layers,
                layers,
                run_rows,
                norm_scales=freeze_ln,
                fused=fused,
            )
            cp = _take(cp_all, len(rows))
            sl = slice(start, start + len(rows))
            logit_clean[sl] = cp.logit.cpu().numpy()
            scale_clean[sl] = cp.scale.cpu().numpy()
            if ablation == "resample":
                where = {r: i for i, r in enumerate(run_rows.tolist())}
                src_idx = torch.tensor([where[s] for s in source[rows].tolist()], device=device)

            for layer, layer_heads in by_layer.items():
                for i in range(0, len(layer_heads), heads_per_pass):
                    group = layer_heads[i : i + heads_per_pass]
                    z_clean = cp.z[layer][:, :, group].permute(2, 0, 1, 3)
                    if ablation == "resample":
                        z_new = cp_all.z[layer][:, :, group][src_idx].permute(2, 0, 1, 3)
                    elif ablation == "mean":
                        z_new = z_mean[layer][group][:, None, None, :].expand_as(z_clean)
                    else:
                        z_new = torch.zeros_like(z_clean)
                    res = ablated_pass(model, ro, cp, layer, group, z_new, freeze_ln, fused)
                    check_finite(res["logit_diff"].transpose(0, 1), f"ablated layer {layer}", rows)
                    for name, value in res.items():
                        out[name][layer, group, sl] = value.cpu().numpy()
                bar.update(1)
    bar.close()

    dims4 = ("layer", "head", "batch", "pos")
    data = {name: (dims4, arr) for name, arr in out.items()}
    data["logit_clean"] = (("batch", "pos"), logit_clean)
    data["ln_scale_clean"] = (("batch", "pos"), scale_clean)
    coords = {
        "layer": np.arange(n_layers),
        "head": np.arange(n_heads),
        "batch": np.arange(n_rows),
        "pos": np.arange(n_pos),
    }
    if ablation == "resample":
        coords["resample_source"] = ("batch", source.numpy())
    attrs = {
        "ablation": ablation,
        "model": model.cfg.model_name,
        "n_layers": n_layers,
        "n_heads": n_heads,
        "parallel_attn_mlp": int(bool(model.cfg.parallel_attn_mlp)),
        "final_norm": "LayerNorm" if ro.centre else "RMSNorm",
        "mean_include_bos": int(mean_include_bos),
        "freeze_ln": int(freeze_ln),
        "logits": "centred over the vocabulary; direct effects use the clean final-LN scale",
    }
    return xr.Dataset(data, coords=coords, attrs=attrs)
