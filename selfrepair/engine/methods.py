"""CoAx's ablation scores of each candidate head, in both its forms, from exact forward passes that
keep the logits over the whole vocabulary at the answer positions (Gong 2026, release 2.1.0,
`CoAblation.conditional_compensation` in src/curvgraph/coablation.py, with `_weight`,
`_feature` and `_energy`; ratios as in experiments/paper/backup_recovery_full.py):

    single_u       = E(clean,     u ablated)           (u's own effect, intact model)
    conditional_u  = E(S ablated, S and u ablated)     (u's effect once the set S is gone)

per answer token, with E one of two forms:

- energy, CoAx's: d = reference logits - ablated logits over the vocabulary, centred and
  weighted by the CLEAN distribution p0 (CoAx's default geometry "clean", feature_mode
  "fisher_centered", full vocabulary, position_mode "last"): sum_v p0_v (d_v - E_p0[d])^2;
- logit_diff: the drop of the task's metric (the answer's logit minus the counterfactual's, or
  the answer's logit centred over the vocabulary).

The ablated z of every head is the one ablation routine's (engine.ablation, chunk.z_new), so
every kind of the registry is measured. analysis.methods turns these into compensation and
amplification ratio. One pass per set: the clean pass, S, and per candidate u and S + u, each
restarted at its first ablated layer from the clean residual stream, or (S + u, u above S's
first layer) at u's layer from S's own pass, whose layers below u's it repeats bit for bit.
Runs on a HookedTransformer or its stand-in (models.standin).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from functools import partial
from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.nn.functional as F
import xarray as xr
from jaxtyping import Bool, Float, Int
from torch import Tensor
from tqdm.auto import tqdm

from selfrepair.engine.ablation import AblationChunk, ablation_chunks, check_ablation
from selfrepair.engine.inputs import TaskInputs, normalize_heads, validate_tokens
from selfrepair.models.readout import readout
from selfrepair.variables import head_label

if TYPE_CHECKING:
    from transformer_lens import HookedTransformer

__all__ = [
    "METHOD_FORMS",
    "answer_logits",
    "clean_residuals",
    "fisher_energy",
    "logits_at",
    "measure_methods",
    "task_metric",
    "token_index",
    "unembedding",
]

METHOD_FORMS = ("energy", "logit_diff")


def fisher_energy(
    reference: Float[Tensor, "token vocab"],
    ablated: Float[Tensor, "token vocab"],
    clean: Float[Tensor, "token vocab"],
) -> Float[Tensor, " token"]:
    """CoAx's Fisher-weighted, centred energy of a change of logits, per token: with
    d = reference - ablated and p0 = softmax(clean), sum_v p0_v (d_v - sum_w p0_w d_w)^2
    (`CoAblation._weight` then the square of `_feature`; p0 clamped at 1e-12 there, a
    difference below float64's resolution of these sums)."""
    p = torch.softmax(clean.double(), -1)
    d = reference.double() - ablated.double()
    centred = d - (p * d).sum(-1, keepdim=True)
    return (p * centred**2).sum(-1)


def task_metric(
    logits: Float[Tensor, "token vocab"],
    target: Int[Tensor, " token"],
    counter: Int[Tensor, " token"] | None,
) -> Float[Tensor, " token"]:
    """The task's metric from full logits: the answer's logit minus the counterfactual's, or
    (no counterfactual) the answer's logit centred over the vocabulary."""
    logits = logits.double()
    picked = logits.gather(-1, target[:, None])[:, 0]
    if counter is None:
        return picked - logits.mean(-1)
    return picked - logits.gather(-1, counter[:, None])[:, 0]


def token_index(scored: Bool[Tensor, "batch pos"]) -> tuple[Tensor, Tensor]:
    """(row, position) of each answer token, row-major: analysis.tasks.scored_tokens' order."""
    rows, pos = torch.nonzero(torch.as_tensor(scored), as_tuple=True)
    return rows, pos


def _patch(z, hook, heads: list[int], z_new: Tensor):
    z = z.clone()
    z[:, :, heads] = z_new.to(z.dtype)
    return z


def unembedding(model: HookedTransformer) -> Float[Tensor, "d_vocab d_model"]:
    """W_U transposed and contiguous, the weight TransformerLens' Unembed hands F.linear: built
    once per measurement instead of once per pass (a 154 MiB copy at GPT-2's size)."""
    with torch.no_grad():
        return model.unembed.W_U.detach().T.contiguous()


def logits_at(
    model: HookedTransformer,
    final: Float[Tensor, "batch pos d_model"],
    index: tuple[Tensor, Tensor],
    unembed: Float[Tensor, "d_vocab d_model"] | None = None,
) -> Float[Tensor, "token vocab"]:
    """The logits at the answer tokens only, from the final residual stream (the unembedding of
    every position would cost more than the rest of a small model's pass), with the Unembed
    module's arithmetic (unembed: unembedding(model), else built here)."""
    picked = model.ln_final(final[index[0], index[1]][:, None])
    weight = unembedding(model) if unembed is None else unembed
    return F.linear(picked, weight, model.unembed.b_U)[:, 0]


@torch.no_grad()
def clean_residuals(
    model: HookedTransformer, tokens: Int[Tensor, "batch pos_plus_1"]
) -> list[Float[Tensor, "batch pos d_model"]]:
    """Each layer's clean resid_pre, where a pass that ablates heads of that layer restarts:
    one pass that stops before the last block (no logits)."""
    n_layers = model.cfg.n_layers
    kept: dict[int, Tensor] = {}

    def keep(x, hook):
        kept[hook.layer()] = x

    hooks = [(f"blocks.{la}.hook_resid_pre", keep) for la in range(n_layers - 1)]
    with model.hooks(fwd_hooks=hooks):
        last = model(tokens[:, :-1], stop_at_layer=n_layers - 1)
    return [kept[la] for la in range(n_layers - 1)] + [last]


def _is_resid_pre(name: str) -> bool:
    return name.endswith(".hook_resid_pre")


@torch.no_grad()
def answer_logits(
    model: HookedTransformer,
    resid: Sequence[Tensor] | Mapping[int, Tensor],
    chunk: AblationChunk,
    by_layer: Mapping[int, list[int]],
    index: tuple[Tensor, Tensor],
    *,
    start: int | None = None,
    unembed: Tensor | None = None,
    keep: dict[int, Tensor] | None = None,
) -> Float[Tensor, "token vocab"]:
    """Logits at the chunk's answer tokens (index: rows within the chunk, positions) of a
    forward pass with every head of by_layer ({layer: heads}) ablated (chunk.z_new), restarted
    at layer `start` from resid[start]: by default the first layer ablated, from the clean
    resid_pre (clean_residuals); or a later layer, from the resid_pre of a pass that ablated
    the same heads below it (kept by `keep`: layer -> resid_pre of each layer the pass runs).
    unembed: as logits_at's."""
    hooks = [
        (f"blocks.{la}.attn.hook_z", partial(_patch, heads=hs, z_new=chunk.z_new(la, hs)))
        for la, hs in by_layer.items()
        if start is None or la >= start
    ]
    if keep is not None:
        hooks.append((_is_resid_pre, lambda x, hook: keep.__setitem__(hook.layer(), x)))
    n_layers = model.cfg.n_layers
    if start is None:
        start = min(by_layer, default=n_layers - 1)
    with model.hooks(fwd_hooks=hooks):
        final = model(resid[start], start_at_layer=start, stop_at_layer=n_layers)
    return logits_at(model, final, index, unembed)


def _chunk_scores(
    model: HookedTransformer,
    tokens: Tensor,
    chunk: AblationChunk,
    members: dict[int, list[int]],
    candidates: list[tuple[int, int]],
    index: tuple[Tensor, Tensor],
    counter: Tensor | None,
    bar: tqdm | None = None,
) -> dict[str, np.ndarray]:
    """Every candidate's four effects [candidate, token] and the set's drop on one chunk. A
    candidate above the set's first layer restarts its pass with the set at its own layer,
    from the set's pass: the layers below compute what they computed there."""
    target = tokens[:, 1:][index]
    cf = None if counter is None else counter[index]
    resid = clean_residuals(model, tokens)
    w = unembedding(model)
    clean = answer_logits(model, resid, chunk, {}, index, unembed=w)
    set_resid: dict[int, Tensor] = {}
    with_set = answer_logits(model, resid, chunk, members, index, unembed=w, keep=set_resid)
    first = min(members, default=model.cfg.n_layers)
    m_clean, m_set = task_metric(clean, target, cf), task_metric(with_set, target, cf)
    out: dict[str, list] = {f"{k}_{f}": [] for k in ("single", "conditional") for f in METHOD_FORMS}
    for la, h in candidates:
        alone = answer_logits(model, resid, chunk, {la: [h]}, index, unembed=w)
        both = {**members, la: sorted({*members.get(la, []), h})}
        after = {"start": la, "resid": set_resid} if la > first else {"resid": resid}
        joint = answer_logits(model, chunk=chunk, by_layer=both, index=index, unembed=w, **after)
        out["single_energy"].append(fisher_energy(clean, alone, clean))
        out["conditional_energy"].append(fisher_energy(with_set, joint, clean))
        out["single_logit_diff"].append(m_clean - task_metric(alone, target, cf))
        out["conditional_logit_diff"].append(m_set - task_metric(joint, target, cf))
        if bar is not None:
            bar.update(tokens.shape[0])
    result = {k: torch.stack(v).cpu().numpy() for k, v in out.items()}
    result["set_drop_logit_diff"] = (m_clean - m_set).cpu().numpy()
    result["set_energy"] = fisher_energy(clean, with_set, clean).cpu().numpy()
    return result


def task_chunks(
    model: HookedTransformer,
    tokens: Int[Tensor, "batch pos_plus_1"],
    ablation: str,
    batch_size: int,
    mean_include_bos: bool,
    task: TaskInputs | None,
) -> tuple[Tensor, Tensor | None, Iterable[AblationChunk]]:
    """(tokens and counterfactuals on the model's device, the ablation routine's chunks of every
    layer): what measure_methods and engine.methods_grad iterate over."""
    device = model.W_U.device
    tokens = tokens.to(device=device, dtype=torch.long)
    counter = None if task is None or task.counter is None else task.counter.to(device)
    chunks = ablation_chunks(
        model,
        tokens,
        ablation,
        range(model.cfg.n_layers),
        readout(model),
        batch_size=batch_size,
        mean_include_bos=mean_include_bos,
        task=task,
    )
    return tokens, counter, chunks


def measure_methods(
    model: HookedTransformer,
    tokens: Int[Tensor, "batch pos_plus_1"],
    ablation: str,
    members: Iterable[Sequence[int]],
    scored: Bool[Tensor, "batch pos"],
    candidates: Iterable[Sequence[int]] | None = None,
    *,
    batch_size: int | None = None,
    mean_include_bos: bool = True,
    task: TaskInputs | None = None,
    progress: bool = False,
) -> xr.Dataset:
    """Per candidate head and answer token, CoAx's single and conditional effects in both forms
    (module docstring).

    Args:
        model: the HookedTransformer (not modified).
        tokens: [batch, pos + 1] token rows, each starting with BOS.
        ablation: a kind of selfrepair.ablations.KINDS (engine.ablation).
        members: the set S, (layer, head) pairs.
        scored: bool [batch, pos], the answer positions.
        candidates: the heads scored; None: every head outside the set.
        batch_size: rows per pass (default: all); never changes a number.
        mean_include_bos, task: as engine.sets.measure_sets.
        progress: a progress bar of the candidates' passes, in rows.

    Returns:
        single_<form>, conditional_<form> (form: energy, logit_diff) with dims candidate (head
        labels; coordinates candidate_layer, candidate_head) and token (coordinates prompt,
        position); set_energy and set_drop_logit_diff (token), the set alone's; attrs
        ablation, model, members.
    """
    check_ablation(ablation)
    validate_tokens(model, tokens, task)
    by_set = normalize_heads(model, members)
    member_list = [(la, h) for la, hs in by_set.items() for h in hs]
    if candidates is None:
        every = normalize_heads(model, None)
        candidates = [(la, h) for la, hs in every.items() for h in hs]
        candidates = [c for c in candidates if c not in member_list]
    candidates = [(int(la), int(h)) for la, h in candidates]
    if bad := [head_label(*c) for c in candidates if c in member_list]:
        raise ValueError(f"candidates {', '.join(bad)} are in the set; leave them out")
    n_rows = tokens.shape[0]
    scored = torch.as_tensor(np.asarray(scored), dtype=torch.bool)
    if tuple(scored.shape) != (n_rows, tokens.shape[1] - 1):
        raise ValueError(f"scored is {tuple(scored.shape)}; give [batch, pos] = tokens less one")
    tokens, counter, chunks = task_chunks(
        model, tokens, ablation, batch_size or n_rows, mean_include_bos, task
    )
    parts: list[dict[str, np.ndarray]] = []
    total = len(candidates) * n_rows
    with tqdm(total=total, desc=f"{ablation}: single and conditional ablation", unit="row",
              mininterval=5, disable=not progress) as bar:  # fmt: skip
        for chunk in chunks:
            sl = chunk.span
            index = tuple(x.to(tokens.device) for x in token_index(scored[sl]))
            cf = None if counter is None else counter[sl]
            args = (model, tokens[sl], chunk, by_set, candidates, index, cf, bar)
            parts.append(_chunk_scores(*args))
    return _methods_dataset(model, parts, scored, candidates, ablation, member_list)


def _methods_dataset(model, parts, scored, candidates, ablation, members) -> xr.Dataset:
    rows, pos = token_index(scored)
    data = {}
    for name in parts[0]:
        values = np.concatenate([p[name] for p in parts], axis=-1)
        data[name] = (("candidate", "token") if values.ndim == 2 else ("token",), values)
    coords = {
        "candidate": [head_label(la, h) for la, h in candidates],
        "candidate_layer": ("candidate", [la for la, _ in candidates]),
        "candidate_head": ("candidate", [h for _, h in candidates]),
        "prompt": ("token", rows.numpy()),
        "position": ("token", pos.numpy()),
    }
    attrs = {"ablation": ablation, "model": model.cfg.model_name, "members": members}
    return xr.Dataset(data, coords=coords, attrs=attrs)
