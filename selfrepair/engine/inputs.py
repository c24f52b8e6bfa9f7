"""What the engine's entry points take and give: checks on the heads and tokens asked for, what
a task adds to its token rows (TaskInputs), the number of heads stacked per pass, and the
(layer, head, batch, pos) arrays and Dataset of their results."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch
import xarray as xr
from torch import Tensor

from selfrepair.ablations import ROWS, ablation_kind
from selfrepair.models.readout import Readout
from selfrepair.variables import HEAD_VARIABLES, head_label

if TYPE_CHECKING:
    from transformer_lens import HookedTransformer

__all__ = [
    "CPU_PASS_BYTES",
    "TaskInputs",
    "check_task_inputs",
    "default_heads_per_pass",
    "empty_head_arrays",
    "grid_coords",
    "heads_dataset",
    "normalize_heads",
    "validate_tokens",
]


def normalize_heads(
    model: HookedTransformer, heads: Iterable[Sequence[int]] | None
) -> dict[int, list[int]]:
    """{layer: sorted heads}; all heads when None. Out-of-range heads fail naming the model size."""
    n_layers, n_heads = model.cfg.n_layers, model.cfg.n_heads
    if heads is None:
        return {layer: list(range(n_heads)) for layer in range(n_layers)}
    by_layer: dict[int, set[int]] = {}
    for pair in heads:
        layer, head = (int(x) for x in pair)
        if not (0 <= layer < n_layers and 0 <= head < n_heads):
            raise ValueError(
                f"head {head_label(layer, head)} is out of range: {model.cfg.model_name} has {n_layers} "
                f"layers of {n_heads} heads (layers and heads count from 0)"
            )
        by_layer.setdefault(layer, set()).add(head)
    if not by_layer:
        raise ValueError("heads is empty: pass None for all heads or a list of (layer, head)")
    return {layer: sorted(hs) for layer, hs in sorted(by_layer.items())}


def validate_tokens(
    model: HookedTransformer, tokens: Tensor, task: TaskInputs | None = None
) -> None:
    """Fail naming the reason unless tokens are [batch, pos] ids of the model's vocabulary that
    fit its context (and a task's inputs fit them: check_task_inputs)."""
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
    check_task_inputs(tokens, task)


@dataclass(frozen=True)
class TaskInputs:
    """What a task (selfrepair.tasks) adds to its token rows, right-padded prompts with their
    answers: each field is optional, and None everywhere is running text.

    Attributes:
        counter: [rows, pos] a counterfactual token per predicted position: the metric becomes
            the logit difference answer - counterfactual (models.readout.Readout.directions).
        partners: [rows, pos + 1] each row's paired corrupted prompt, the same length: the z of
            corrupted ablation (the registry's partner_pool TASK: selfrepair.ablations).
        real: [rows, pos + 1] bool, the positions that are not padding: the mean z of mean
            ablation is taken over the positions t whose next token t + 1 is real only (not
            a row's last real token, its last answer: engine.ablation.mean_z).
        groups: [rows] int, each row's template group, 0 .. G - 1 (tasks.TaskPrompts.groups):
            template-mean ablation's mean is per group (None: one group).
    """

    counter: Tensor | None = None
    partners: Tensor | None = None
    real: Tensor | None = None
    groups: Tensor | None = None

    def rows(self, index: Tensor) -> TaskInputs:
        """The same inputs for rows `index` (a batch)."""
        return TaskInputs(*(None if x is None else x[index] for x in self._fields()))

    def _fields(self) -> tuple[Tensor | None, ...]:
        return self.counter, self.partners, self.real, self.groups


def check_task_inputs(tokens: Tensor, task: TaskInputs | None) -> None:
    """Fail naming the field unless every given field of `task` fits the token rows."""
    if task is None:
        return
    n_rows, n_tok = tokens.shape
    shapes = {"counter": (n_rows, n_tok - 1), "partners": (n_rows, n_tok), "real": (n_rows, n_tok)}
    shapes["groups"] = (n_rows,)
    for name, shape in shapes.items():
        value = getattr(task, name)
        if value is not None and tuple(value.shape) != shape:
            raise ValueError(
                f"task.{name} has shape {tuple(value.shape)}, not {shape} as the token rows need"
            )


# On a CPU, a pass's largest activation is kept under this size: glibc's malloc serves blocks
# under 32 MiB from its heap and reuses them, while larger ones are mapped afresh and page-faulted
# in on every use (about a tenth of the engine's time at gpt2-small shapes).
CPU_PASS_BYTES = 24 * 2**20


def default_heads_per_pass(model: HookedTransformer, rows: int, n_pos: int) -> int:
    """Heads stacked per ablated pass when not given: all of a layer's on a GPU; on a CPU as many
    as keep the pass's widest activation ([heads x rows x pos, width]) within CPU_PASS_BYTES."""
    cfg = model.cfg
    if model.W_U.device.type != "cpu":
        return cfg.n_heads
    n_kv = cfg.n_key_value_heads or cfg.n_heads
    width = max(cfg.d_mlp or 0, (cfg.n_heads + 2 * n_kv) * cfg.d_head, cfg.d_model)
    per_head = rows * n_pos * width * model.W_U.element_size()
    return max(1, min(cfg.n_heads, CPU_PASS_BYTES // per_head))


def grid_coords(model: HookedTransformer, n_rows: int, n_pos: int) -> dict[str, np.ndarray]:
    """The layer, head, batch and pos coordinates of a store of every head on every token."""
    return {
        "layer": np.arange(model.cfg.n_layers),
        "head": np.arange(model.cfg.n_heads),
        "batch": np.arange(n_rows),
        "pos": np.arange(n_pos),
    }


def empty_head_arrays(model: HookedTransformer, n_rows: int, n_pos: int) -> dict[str, np.ndarray]:
    """NaN-filled float32 (layer, head, batch, pos) arrays of HEAD_VARIABLES (NaN: not measured)
    and (batch, pos) arrays of the clean logit and final-LN scale."""
    shape = (model.cfg.n_layers, model.cfg.n_heads, n_rows, n_pos)
    out = {v: np.full(shape, np.nan, np.float32) for v in HEAD_VARIABLES}
    out["logit_clean"] = np.empty((n_rows, n_pos), np.float32)
    out["ln_scale_clean"] = np.empty((n_rows, n_pos), np.float32)
    return out


def heads_dataset(
    model: HookedTransformer,
    ro: Readout,
    out: dict[str, np.ndarray],
    ablation: str,
    source: Tensor | None,
    mean_include_bos: bool,
    freeze_ln: bool,
) -> xr.Dataset:
    """measure_heads' arrays as a Dataset with its coordinates and attributes."""
    n_layers, n_heads, n_rows, n_pos = out[HEAD_VARIABLES[0]].shape
    dims4 = ("layer", "head", "batch", "pos")
    data = {name: (dims4 if arr.ndim == 4 else ("batch", "pos"), arr) for name, arr in out.items()}
    coords = grid_coords(model, n_rows, n_pos)
    if ablation_kind(ablation).partner_pool == ROWS:
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
