"""Clean per-token quantities: correct-token logit, final LN scale, loss and the direct effect of
every component (embeddings, each head, each layer's attention bias, each MLP, unembedding bias).

The direct effects sum to the centred correct-token logit exactly (up to float error): that is
checked on every token by `decomposition_error`.
"""

from __future__ import annotations

import numpy as np
import torch
import xarray as xr
from jaxtyping import Float, Int
from torch import Tensor
from tqdm.auto import tqdm

from selfrepair.engine.self_repair import validate_tokens
from selfrepair.models.forward import check_supported, clean_pass, dot
from selfrepair.models.readout import readout

COMPONENTS_2D = ("de_embed", "de_pos_embed", "de_unembed_bias")


def clean_direct_effects(
    model,
    tokens: Int[Tensor, "batch pos"],
    *,
    batch_size: int | None = None,
    progress: bool = False,
    desc: str | None = None,
) -> xr.Dataset:
    """Dims layer, head, batch, pos (pos = tokens.shape[1] - 1). Variables: logit_clean,
    ln_scale_clean, loss, target, de_head, de_attn_bias, de_mlp, de_embed, de_pos_embed,
    de_unembed_bias."""
    check_supported(model)
    validate_tokens(model, tokens)
    n_rows, n_pos = tokens.shape[0], tokens.shape[1] - 1
    n_layers, n_heads = model.cfg.n_layers, model.cfg.n_heads
    batch_size = batch_size or n_rows
    device = model.W_U.device
    tokens = tokens.to(device=device, dtype=torch.long)
    ro = readout(model)
    all_layers = set(range(n_layers))

    def empty(*shape):
        return np.zeros(shape, np.float32)

    out2 = {
        k: empty(n_rows, n_pos) for k in ("logit_clean", "ln_scale_clean", "loss", *COMPONENTS_2D)
    }
    de_head = empty(n_layers, n_heads, n_rows, n_pos)
    de_attn_bias = empty(n_layers, n_rows, n_pos)
    de_mlp = empty(n_layers, n_rows, n_pos)

    for start in tqdm(
        range(0, n_rows, batch_size),
        desc=desc or "clean",
        unit="batch",
        disable=not progress,
        mininterval=5.0,
    ):
        rows = torch.arange(start, min(start + batch_size, n_rows))
        sl = slice(start, start + len(rows))
        chunk = tokens[rows.to(device)]
        with torch.no_grad():
            cp = clean_pass(model, chunk, ro, all_layers, set(), rows, embeddings=True)
            s = cp.scale
            for layer in range(n_layers):
                w_o = model.blocks[layer].attn.W_O.float()  # [head, d_head, d_model]
                v = torch.einsum("hdm,bpm->bphd", w_o, cp.u)
                de_head[layer, :, sl] = (
                    (torch.einsum("bphd,bphd->hbp", cp.z[layer].float(), v) / s).cpu().numpy()
                )
                b_o = model.blocks[layer].attn.b_O.float()
                de_attn_bias[layer, sl] = (dot(b_o, cp.u) / s).cpu().numpy()
                if layer in cp.mlp_dot:
                    de_mlp[layer, sl] = (cp.mlp_dot[layer] / s).cpu().numpy()
            out2["logit_clean"][sl] = cp.logit.cpu().numpy()
            out2["ln_scale_clean"][sl] = s.cpu().numpy()
            out2["de_embed"][sl] = (cp.embed_dot / s).cpu().numpy()
            if cp.pos_embed_dot is not None:
                out2["de_pos_embed"][sl] = (cp.pos_embed_dot / s).cpu().numpy()
            out2["de_unembed_bias"][sl] = cp.const.cpu().numpy()
            out2["loss"][sl] = next_token_loss(model, cp.final, chunk[:, 1:]).cpu().numpy()

    dims2, dims3 = ("batch", "pos"), ("layer", "batch", "pos")
    data = {k: (dims2, v) for k, v in out2.items()}
    data["target"] = (dims2, tokens[:, 1:].to(torch.int32).cpu().numpy())
    data["de_head"] = (("layer", "head", "batch", "pos"), de_head)
    data["de_attn_bias"] = (dims3, de_attn_bias)
    data["de_mlp"] = (dims3, de_mlp)
    coords = {
        "layer": np.arange(n_layers),
        "head": np.arange(n_heads),
        "batch": np.arange(n_rows),
        "pos": np.arange(n_pos),
    }
    attrs = {
        "model": model.cfg.model_name,
        "final_norm": "LayerNorm" if ro.centre else "RMSNorm",
        "logits": "centred over the vocabulary; direct effects use the clean final-LN scale",
    }
    return xr.Dataset(data, coords=coords, attrs=attrs)


def next_token_loss(
    model, final_resid: Float[Tensor, "batch pos d_model"], targets: Int[Tensor, "batch pos"]
) -> Float[Tensor, "batch pos"]:
    """Cross-entropy of the next token, from the final residual stream (full unembedding)."""
    logits = model.unembed(model.ln_final(final_resid)).float()
    return torch.nn.functional.cross_entropy(logits.transpose(1, 2), targets, reduction="none")


def total_direct_effect(ds: xr.Dataset) -> xr.DataArray:
    """Sum of every component's direct effect; equals logit_clean."""
    return (
        ds.de_head.sum(("layer", "head"))
        + ds.de_attn_bias.sum("layer")
        + ds.de_mlp.sum("layer")
        + ds.de_embed
        + ds.de_pos_embed
        + ds.de_unembed_bias
    )


def decomposition_error(ds: xr.Dataset) -> float:
    """max |sum of direct effects - centred correct-token logit| over all tokens."""
    return float(np.abs(total_direct_effect(ds) - ds.logit_clean).max())
