"""The one ablation routine: how the ablated z of a head is chosen, and the clean passes it needs.

engine.self_repair.measure_heads, AtP (engine.atp), the sets (engine.sets) and the mechanism
passes (mechanisms/neurons.py, norms.py) ablate through this module only, so their numbers line
up. What each kind replaces z with, and which rows or means it needs, is its entry in the
registry (selfrepair.ablations.KINDS); this module reads those properties, never a kind's name:
- resample: row i takes z from row source[i] (default (i + 1) mod n of the tokens passed), same
  position; a batch of rows is run together with the rows outside it that it takes z from
  (`with_partners`), and only its own rows are kept (`first_rows`);
- mean: mean z over all rows and the positions the pass reads (every token but the last, a
  target only; position 0 optional; in a task, the positions that predict a real token);
- zero: z = 0; zero-with-value-bias: z = -b_V, the whole slice entering W_O zero (CoAx's);
- template-mean (tasks): the mean z over the corrupted prompts of the row's template, same
  position (Wang et al.'s); the tables both read: engine.replacements;
- corrupted (tasks): row i takes z from its paired corrupted prompt, same position: resample
  with the partner rows taken from a separate pool (`partners`) instead of the rows measured
  (the circuits convention, e.g. IOI's ABC prompts).
An ablated pass restarts from the clean residual stream right after the ablated layer's attention
(forward.restart_point), so only what reads the head's output is recomputed. The mechanism passes
add the choice of activations to keep (any hook by name), in the clean pass and in the rerun, and
reruns from any point of a layer (resid_pre for the self-reinforcement edit).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from jaxtyping import Float, Int
from torch import Tensor

from selfrepair.ablations import ROWS, TASK, Ablation, ablation_kind
from selfrepair.engine.inputs import TaskInputs
from selfrepair.engine.replacements import mean_z, replacement_tables, row_groups
from selfrepair.models.forward import CleanPass, check_finite, clean_pass, restart_point
from selfrepair.models.readout import Readout

if TYPE_CHECKING:
    from transformer_lens import HookedTransformer

__all__ = [
    "ALL_HEADS",
    "POINTS",
    "AblationChunk",
    "ablated_final",
    "ablated_z",
    "ablation_chunks",
    "check_ablation",
    "checked_source",
    "finish_from",
    "first_rows",
    "head_output",
    "keeping",
    "mean_z",
    "partner_index",
    "resample_source",
    "with_partners",
]

POINTS = ("resid_pre", "resid_mid", "resid_post")
ALL_HEADS = slice(None)


def check_ablation(ablation: str) -> Ablation:
    """The registry's kind of this name (selfrepair.ablations.KINDS); ValueError naming the
    choices for any other."""
    return ablation_kind(ablation)


def resample_source(n_rows: int) -> Int[Tensor, " batch"]:
    """The paper's resample partner: row i takes z from row (i + 1) mod n_rows, same position."""
    return (torch.arange(n_rows) + 1) % n_rows


def checked_source(source: Tensor | None, n_rows: int) -> Int[Tensor, " batch"]:
    """The resample partner of each row (resample_source when None), checked to be row indices."""
    source = resample_source(n_rows) if source is None else torch.as_tensor(source).long()
    if source.shape != (n_rows,) or bool(((source < 0) | (source >= n_rows)).any()):
        raise ValueError(f"source must hold {n_rows} row indices in [0, {n_rows})")
    if n_rows < 2:
        raise ValueError("resample ablation needs at least 2 rows to take z from another row")
    return source


def with_partners(rows: Int[Tensor, " batch"], source: Int[Tensor, " rows"]) -> Tensor:
    """`rows`, then (sorted) the rows outside them that one of them takes its resample z from."""
    extra = sorted(set(source[rows].tolist()) - set(rows.tolist()))
    return torch.cat([rows, torch.tensor(extra, dtype=torch.long)])


def partner_index(
    run_rows: Int[Tensor, " run"], rows: Int[Tensor, " batch"], source: Tensor, device
) -> Int[Tensor, " batch"]:
    """Where in `run_rows` (with_partners' order) each of `rows` finds its resample partner."""
    where = {r: i for i, r in enumerate(run_rows.tolist())}
    return torch.tensor([where[s] for s in source[rows].tolist()], device=device)


def _first(d: dict, n: int) -> dict:
    return {k: v[:n] for k, v in d.items()}


def first_rows(cp: CleanPass, n: int) -> CleanPass:
    """The first n rows of a clean pass (the rest were only run for their resample z)."""
    return CleanPass(
        u=cp.u[:n],
        const=cp.const[:n],
        scale=cp.scale[:n],
        logit=cp.logit[:n],
        attn_dot=_first(cp.attn_dot, n),
        mlp_dot=_first(cp.mlp_dot, n),
        z=_first(cp.z, n),
        restart=_first(cp.restart, n),
        norm_scale=_first(cp.norm_scale, n),
    )


def ablated_z(
    ablation: str,
    z: Float[Tensor, "run pos head d_head"],
    n: int,
    partner: Int[Tensor, " batch"] | None = None,
    z_mean: Float[Tensor, "head d_head"] | None = None,
    heads: list[int] | slice = ALL_HEADS,
) -> Float[Tensor, "batch pos heads d_head"]:
    """The ablated z of `heads` of one layer for the first n rows of `z` (one layer's clean z over
    a batch and its partner rows): the kind's replacement (resample and corrupted, z of row
    partner[i]; mean and zero-with-value-bias, z_mean; template-mean, z_mean[partner[i]]; zero,
    0).

    Only indexing and views: no arithmetic, so every caller gets the same numbers.
    """
    return ablation_kind(ablation).replacement(z, n, partner, z_mean, heads)


@dataclass
class AblationChunk:
    """One batch of rows: its clean pass, the clean activations asked for by hook name, and
    what z_new needs to choose the ablated z of any head of the asked layers."""

    rows: Int[Tensor, " batch"]  # indices into the tokens passed to ablation_chunks
    cp: CleanPass  # the batch's own rows
    kept: dict[str, Tensor]
    ablation: str
    z_run: dict[int, Tensor]  # clean z over the batch and its partner rows
    partner: Int[Tensor, " batch"] | None  # index into z_run's rows, or the row's group
    # (a TEMPLATE_MEAN kind's, into z_mean's)
    z_mean: dict[int, Tensor]

    @property
    def span(self) -> slice:
        """The rows as a slice (a chunk's rows are consecutive)."""
        start = int(self.rows[0])
        return slice(start, start + len(self.rows))

    def z_new(
        self, layer: int, heads: list[int] | slice = ALL_HEADS
    ) -> Float[Tensor, "batch pos heads d_head"]:
        """The ablated z of `heads` of `layer` (ablated_z)."""
        return ablated_z(
            self.ablation,
            self.z_run[layer],
            len(self.rows),
            self.partner,
            self.z_mean.get(layer),
            heads,
        )


def keeping(names: Iterable[str], store: dict[str, Tensor]) -> list[tuple[str, object]]:
    """Hooks that store the activation of each named hook point in `store` (by name)."""

    def keep(x, hook):
        store[hook.name] = x

    return [(name, keep) for name in names]


def _pool(
    tokens: Tensor, kind: Ablation, source: Tensor | None, task: TaskInputs | None
) -> tuple[Tensor, Tensor | None, Tensor | None]:
    """(the rows a clean pass may run, their counterfactual tokens, each measured row's partner
    among them), by the kind's partner_pool: ROWS, the tokens and each row's partner among them
    (checked_source); TASK, the tokens then their paired corrupted prompts (row i's partner: row
    n + i); none, the tokens."""
    counter = None if task is None or task.counter is None else task.counter.to(tokens.device)
    n_rows = tokens.shape[0]
    if kind.partner_pool == ROWS:
        return tokens, counter, checked_source(source, n_rows)
    if kind.partner_pool != TASK:
        return tokens, counter, source
    if task is None or task.partners is None:
        raise ValueError(f"{kind.name} ablation needs each row's corrupted prompt (task.partners)")
    pool = torch.cat([tokens, task.partners.to(tokens.device, torch.long)])
    counter = None if counter is None else torch.cat([counter, counter])
    return pool, counter, torch.arange(n_rows) + n_rows


def _row_index(kind: Ablation, run_rows, rows, source, task, device) -> Tensor | None:
    """What the kind's replacement indexes per row: its partner among run_rows (a partner
    kind), its group (template-mean: engine.replacements.row_groups), or None."""
    if kind.takes_partner_rows:
        return partner_index(run_rows, rows, source, device)
    return row_groups(kind, task, rows, device)


def ablation_chunks(
    model: HookedTransformer,
    tokens: Int[Tensor, "rows pos_plus_1"],
    ablation: str,
    layers: Iterable[int],
    ro: Readout,
    *,
    batch_size: int,
    mean_include_bos: bool = True,
    keep: Iterable[str] = (),
    restart_layers: Iterable[int] | None = None,
    source: Tensor | None = None,
    z_mean: dict[int, Tensor] | None = None,
    norm_scales: bool = False,
    fused: bool = True,
    task: TaskInputs | None = None,
) -> Iterator[AblationChunk]:
    """Clean passes over `tokens` in batches of rows, each with what choosing the ablated z of
    its heads over the same `tokens` needs (so pass one shard to match a shard of the engine).

    Args:
        model: the HookedTransformer (not modified).
        tokens: [rows, pos + 1] token ids, each row starting with BOS.
        ablation: a kind of selfrepair.ablations.KINDS (a task's only: corrupted).
        layers: layers whose z (clean and ablated) is needed.
        ro: the model's readout (models.readout.readout).
        batch_size: rows per clean pass (partner rows outside the batch come on top).
        mean_include_bos: whether the mean z includes position 0.
        keep: extra hook names kept from the clean pass (AblationChunk.kept).
        restart_layers: layers whose restart residual is kept (default: `layers`).
        source: resample partner of each row (default: resample_source).
        z_mean: the kind's table per layer when already computed (default:
            engine.replacements.replacement_tables).
        norm_scales, fused: passed to models.forward.clean_pass.
        task: a task's counterfactuals (metric), corrupted prompts and real positions.
    """
    kind = check_ablation(ablation)
    layers = sorted(set(layers))
    restart_layers = set(layers if restart_layers is None else restart_layers)
    keep = list(keep)
    device = model.W_U.device
    tokens = tokens.to(device=device, dtype=torch.long)
    n_rows = tokens.shape[0]
    pool, counter, source = _pool(tokens, kind, source, task)
    paired = kind.takes_partner_rows
    if z_mean is None:
        z_mean = replacement_tables(
            model, tokens, kind, layers, batch_size, mean_include_bos, fused, task
        )

    # No torch.no_grad() around the loop: a context held open across `yield` would be left by
    # whoever finalises the generator (clean_pass runs under no_grad itself; callers keep theirs).
    for start in range(0, n_rows, batch_size):
        rows = torch.arange(start, min(start + batch_size, n_rows))
        run_rows = with_partners(rows, source) if paired else rows
        kept: dict[str, Tensor] = {}
        with model.hooks(fwd_hooks=keeping(keep, kept)):
            cp = clean_pass(
                model,
                pool[run_rows.to(device)],
                ro,
                set(layers),
                restart_layers,
                run_rows,
                norm_scales=norm_scales,
                fused=fused,
                counter=None if counter is None else counter[run_rows.to(counter.device)],
            )
        n = len(rows)
        partner = _row_index(kind, run_rows, rows, source, task, device)
        yield AblationChunk(
            rows=rows,
            cp=first_rows(cp, n),
            kept=_first(kept, n),
            ablation=ablation,
            z_run=cp.z,
            partner=partner,
            z_mean=z_mean or {},
        )


def finish_from(
    model: HookedTransformer,
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
    model: HookedTransformer, z: Float[Tensor, "batch pos head d_head"], layer: int, head: int
) -> Float[Tensor, "batch pos d_model"]:
    """A head's output z W_O (no bias: b_O is shared by the layer's heads)."""
    return torch.einsum("bpd,dm->bpm", z[:, :, head], model.blocks[layer].attn.W_O[head])


def ablated_final(
    model: HookedTransformer,
    chunk: AblationChunk,
    layer: int,
    head: int,
    keep: Iterable[str] = (),
) -> tuple[Float[Tensor, "batch pos d_model"], dict[str, Tensor]]:
    """Final residual (and kept activations) of the run where only `head` of `layer` is ablated,
    restarted right after that layer's attention from the chunk's clean residual stream."""
    cp = chunk.cp
    delta = head_output(model, chunk.z_new(layer) - cp.z[layer], layer, head)
    point = restart_point(model)
    return finish_from(model, layer, point, cp.restart[layer] + delta, keep, chunk.rows)
