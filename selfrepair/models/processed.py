"""A model's processed weights as a file: written once per model from the HookedTransformer that
models.loading builds (LayerNorm folded, writing weights and unembedding centred), read by every
later model job into the TransformerLens-free stand-in (models.standin), so that those jobs
import neither TransformerLens nor transformers.

The folder holds `weights.safetensors` (the model's whole state_dict, buffers included: the
rotary sin/cos tables) and `model.json`: the format, the config fields the engine reads, the
weights' source (what they were loaded from and how they were processed: a file made from other
weights is refused as stale) and the SHA-256 of the safetensors file (a damaged file is
refused). Every refusal is one line naming the fix.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

import torch

from selfrepair.models import value_bias
from selfrepair.models.kinds import POST_NORM_ARCHITECTURES
from selfrepair.models.standin import StandIn
from selfrepair.models.standin_parts import ACTIVATIONS, NORM_TYPES, standin_config

__all__ = [
    "FORMAT",
    "MODEL_JSON",
    "WEIGHTS_FILE",
    "ProcessedWeightsError",
    "processed_fields",
    "read_processed",
    "standin_problem",
    "unsupported_reason",
    "write_processed",
]

FORMAT = 1
WEIGHTS_FILE = "weights.safetensors"
MODEL_JSON = "model.json"
_SCALARS = (str, int, float, bool, type(None))


class ProcessedWeightsError(ValueError):
    """A processed-weights folder that is missing, damaged or made from other weights."""


def standin_problem(model) -> str | None:
    """Why the stand-in cannot compute this HookedTransformer as it does, or None."""
    from selfrepair.models.blocks import unsupported_reason

    cfg = model.cfg
    checks = {
        f"block: {unsupported_reason(model.blocks[0])}": unsupported_reason(model.blocks[0]),
        f"activation {cfg.act_fn!r}": not cfg.attn_only and cfg.act_fn not in ACTIVATIONS,
        f"normalization {cfg.normalization_type!r}": cfg.normalization_type not in NORM_TYPES,
        "post-norm": cfg.original_architecture in POST_NORM_ARCHITECTURES,
        "post-embedding LayerNorm": cfg.post_embedding_ln,
        "per-head attention results": cfg.use_attn_result,
        "local attention": cfg.use_local_attn,
        "rotary variants": cfg.use_NTK_by_parts_rope
        or cfg.use_yarn_rope
        or cfg.use_dynamic_ntk_rope,
        "several devices": cfg.n_devices != 1,
        "soft-capped logits": cfg.output_logits_soft_cap > 0,
    }
    bad = [name for name, failed in checks.items() if failed]
    return ", ".join(bad) if bad else None


def processed_fields(model) -> dict[str, Any]:
    """The config fields of a HookedTransformer the stand-in and the engine read: every scalar
    field of its cfg, and each layer's attention scale."""
    fields = {k: v for k, v in model.cfg.to_dict().items() if isinstance(v, _SCALARS)}
    for key in ("device", "dtype"):  # set by the job that reads the file
        fields.pop(key, None)
    fields["attn_scales"] = [float(block.attn.attn_scale) for block in model.blocks]
    return fields


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(1 << 22):
            digest.update(chunk)
    return digest.hexdigest()


def write_processed(model, folder: str | Path, source: dict[str, Any]) -> None:
    """Write a processed HookedTransformer's weights (float32) and fields to `folder`; each file
    under a temporary name first, so that no half-written file is ever read.

    Args:
        model: the processed HookedTransformer (models.loading.load_model's).
        folder: the output folder (created).
        source: what the weights were loaded from and how (read_processed compares it).

    A model the stand-in cannot copy (standin_problem) gets only its model.json, which says
    so: its jobs load it through TransformerLens (unsupported_reason).
    """
    from safetensors.torch import save_file

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    if problem := standin_problem(model):  # its jobs load it through TransformerLens
        meta = {"format": FORMAT, "unsupported": problem, "source": source}
        (folder / MODEL_JSON).write_text(json.dumps(meta, indent=1, sort_keys=True) + "\n")
        return
    tensors = {
        name: t.detach().to("cpu", torch.float32).contiguous()
        if t.is_floating_point()
        else t.detach().cpu().contiguous()
        for name, t in model.state_dict().items()
    }
    # the value biases TransformerLens folded into b_O (not in the state dict), for the kinds
    # that ablate the whole slice entering W_O (models.value_bias)
    if (biases := getattr(model, value_bias.FOLDED_B_V, None)) is not None:
        tensors[value_bias.FOLDED_B_V] = biases.detach().to("cpu", torch.float32).contiguous()
    tmp = folder / (WEIGHTS_FILE + ".tmp")
    save_file(tensors, str(tmp))
    meta = {
        "format": FORMAT,
        "fields": processed_fields(model),
        "source": source,
        "sha256": _sha256(tmp),
    }
    os.replace(tmp, folder / WEIGHTS_FILE)
    tmp_json = folder / (MODEL_JSON + ".tmp")
    tmp_json.write_text(json.dumps(meta, indent=1, sort_keys=True) + "\n")
    os.replace(tmp_json, folder / MODEL_JSON)


def _meta(folder: Path, source: dict[str, Any] | None) -> dict[str, Any]:
    """The folder's model.json, checked: present, readable, this format, this source."""
    fix = "delete the folder and rerun the workflow (rule process_weights writes it)"
    path = folder / MODEL_JSON
    try:
        meta = json.loads(path.read_text())
        if "unsupported" in meta:
            fields, sha = {}, ""
        else:
            fields, sha = meta["fields"], meta["sha256"]
    except FileNotFoundError:
        raise ProcessedWeightsError(f"processed weights {path} are missing: {fix}") from None
    except (ValueError, KeyError, TypeError) as err:
        raise ProcessedWeightsError(
            f"processed weights {path} are damaged ({err}): {fix}"
        ) from None
    if meta.get("format") != FORMAT or not isinstance(fields, dict) or not isinstance(sha, str):
        raise ProcessedWeightsError(f"processed weights {path} are of another format: {fix}")
    if source is not None and meta.get("source") != source:
        raise ProcessedWeightsError(
            f"processed weights {folder} were made from other weights ({meta.get('source')}, "
            f"not {source}): {fix}"
        )
    return meta


def unsupported_reason(folder: str | Path, source: dict[str, Any] | None = None) -> str | None:
    """Why the stand-in cannot run the model of this processed-weights folder (its jobs then
    load it through TransformerLens), or None; the folder checked as read_processed checks it."""
    return _meta(Path(folder), source).get("unsupported")


def read_processed(
    folder: str | Path,
    source: dict[str, Any] | None = None,
    device: str = "cpu",
    dtype: torch.dtype = torch.float32,
) -> StandIn:
    """The stand-in of the processed weights in `folder`, on `device` in `dtype`, in eval mode.

    Args:
        folder: what write_processed wrote.
        source: the weights' source the job expects; None: not compared (tests).
        device: torch device.
        dtype: torch dtype of the weights (they are stored in float32).
    """
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    folder = Path(folder)
    meta = _meta(folder, source)
    if "unsupported" in meta:
        raise ProcessedWeightsError(
            f"the stand-in cannot run the model of {folder}: "
            f"{meta['unsupported']}; load it through TransformerLens"
        )
    weights = folder / WEIGHTS_FILE
    fix = "delete the folder and rerun the workflow (rule process_weights writes it)"
    if not weights.is_file() or _sha256(weights) != meta["sha256"]:
        raise ProcessedWeightsError(f"processed weights {weights} are missing or damaged: {fix}")
    try:
        state = load_file(str(weights))
    except (SafetensorError, OSError) as err:
        raise ProcessedWeightsError(
            f"processed weights {weights} are damaged ({err}): {fix}"
        ) from None
    biases = state.pop(value_bias.FOLDED_B_V, None)
    model = StandIn(standin_config(meta["fields"], "cpu", torch.float32))
    model.load_state_dict(state, strict=True, assign=True)
    model.cfg.device, model.cfg.dtype = device, dtype
    model = model.to(device=device, dtype=dtype) if dtype != torch.float32 else model.to(device)
    if biases is not None:
        value_bias.attach(model, [biases])
    return model.eval()
