"""The ablation kinds, one object each: the one registry of what replaces an ablated head's z.

The engine (engine.ablation: every pass, AtP, the sets, the mechanisms), the stores' partner
coordinate, the explorer, the captions, the plot colours, the config checks and the output paths
read a kind's properties here, never its name. A new kind is one entry of KINDS, the schema's
enums (tests/test_ablations.py holds them equal) and its slow reference (reference/heads.py).
No torch here (the analysis environment has none): the replacements only index the tensors
they are given.

A kind's frozen-LayerNorm variant (`<kind>-frozen-ln`: every LayerNorm after the ablated head
keeps its clean scale) is a variant of each kind, spelled by `variant` and read by
`parse_variant` only.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

__all__ = [
    "FROZEN_LN_SUFFIX",
    "KINDS",
    "ROWS",
    "MEAN",
    "TASK",
    "TEMPLATE_MEAN",
    "VALUE_BIAS",
    "TASK_ABLATIONS",
    "TASK_VARIANTS",
    "TEXT_ABLATIONS",
    "VARIANT_NAMES",
    "Ablation",
    "ablation_kind",
    "parse_variant",
    "register",
    "variant",
]

# Where a kind that takes z from another row finds that row (Ablation.partner_pool):
ROWS = "rows"  # among the rows measured: row i's is source[i], default (i + 1) mod n, kept as
# the store's `resample_source` coordinate
TASK = "task"  # a task's paired corrupted prompts (engine.inputs.TaskInputs.partners), run
# after the rows measured: row i's is row n + i of that pool (running text has none)

# The per-layer table a kind replaces z from instead of another row's z (Ablation.table), made
# once per measurement (engine.replacements.replacement_tables) and handed to its replacement as
# z_mean:
MEAN = "mean"  # [head, d_head]: the mean z over the rows measured (engine.replacements.mean_z)
VALUE_BIAS = "value_bias"  # [head, d_head]: minus each head's value bias, which TransformerLens
# folds into b_O (models.value_bias): z + b_V is the whole slice entering W_O, CoAx's zero
TEMPLATE_MEAN = "template_mean"  # [group, pos, head, d_head]: the mean z over a task's
# corrupted prompts of each template group, per position; `partner` is each row's group
TABLES = (MEAN, VALUE_BIAS, TEMPLATE_MEAN)


def _partner_z(z, n, partner, z_mean, heads):
    """z of row partner[i] (an index into z's rows: the batch and the partners run with it)."""
    return z[:, :, heads][partner]


def _mean_z(z, n, partner, z_mean, heads):
    """The layer's [head, d_head] table (the mean z, or minus the value bias) on every row and
    position, as a view."""
    chosen = z_mean[heads]
    return chosen.expand(n, z.shape[1], *chosen.shape)


def _group_z(z, n, partner, z_mean, heads):
    """The row's group's z at each position (z_mean [group, pos, head, d_head], partner[i]: row
    i's group)."""
    return z_mean[:, :, heads][partner]


def _zero_z(z, n, partner, z_mean, heads):
    """0 (torch imported here, so that importing the registry needs none)."""
    import torch

    return torch.zeros_like(z[:n, :, heads])


@dataclass(frozen=True)
class Ablation:
    """One ablation kind.

    Attributes:
        name: its name in the config, the paths (ablation/<name>/) and the stores' attributes.
        replacement: (z, n, partner, z_mean, heads) -> the ablated z of `heads` of one layer for
            the first n rows of z [run, pos, head, d_head]: only indexing and views, no
            arithmetic, so every caller (engine, AtP, sets, mechanisms) gets the same numbers.
        note: what it replaces a head's z with, as a task's caption says it.
        partner_pool: None, or where the row it takes z from lies (ROWS, TASK).
        partner_label: the explorer's label of that row ({row}: its number).
        table: None, or the per-layer table its replacement reads as z_mean (MEAN,
            VALUE_BIAS, TEMPLATE_MEAN).
        color: its colour in every figure (None: the figures' head colour).
    """

    name: str
    replacement: Callable[..., Any]
    note: str
    partner_pool: str | None = None
    partner_label: str | None = None
    table: str | None = None
    color: str | None = None

    def __post_init__(self) -> None:
        if self.partner_pool not in (None, ROWS, TASK):
            raise ValueError(
                f"ablation {self.name}: partner_pool must be None, {ROWS!r} or {TASK!r}"
            )
        if self.table not in (None, *TABLES):
            raise ValueError(f"ablation {self.name}: table must be None or one of {TABLES}")
        if self.partner_pool and not self.partner_label:
            raise ValueError(f"ablation {self.name}: a kind with partner rows needs partner_label")

    @property
    def takes_partner_rows(self) -> bool:
        """Whether a pass runs other rows with the measured ones, for their z."""
        return self.partner_pool is not None

    @property
    def reads_mean(self) -> bool:
        """Whether it needs the mean z of each layer over the rows measured."""
        return self.table == MEAN

    @property
    def needs_corrupted(self) -> bool:
        """Whether it reads a task's corrupted prompts (as partner rows or through a table)."""
        return self.partner_pool == TASK or self.table == TEMPLATE_MEAN

    @property
    def on_text(self) -> bool:
        """Whether running text has what it needs (no task's corrupted prompts)."""
        return not self.needs_corrupted


KINDS: dict[str, Ablation] = {
    kind.name: kind
    for kind in (
        Ablation(
            "resample",
            _partner_z,
            note="resample (each head's z from the next prompt, same position)",
            partner_pool=ROWS,
            partner_label="resample partner row {row}",
            color="#1f77b4",
        ),
        Ablation(
            "mean",
            _mean_z,
            note="mean (each head's mean z over the task's prompts, padding left out)",
            table=MEAN,
            color="#ff7f0e",
        ),
        Ablation("zero", _zero_z, note="zero", color="#2ca02c"),
        Ablation(
            "zero-with-value-bias",
            _mean_z,
            note="zero of the whole slice entering W_O, the value bias b_V included (CoAx's "
            "zero; zero keeps b_V, folded into b_O)",
            table=VALUE_BIAS,
            color="#8c564b",
        ),
        Ablation(
            "corrupted",
            _partner_z,
            note="corrupted (each head's z from its prompt's corrupted partner, same position)",
            partner_pool=TASK,
            partner_label="corrupted prompt (the head's z taken from it, same position)",
        ),
        Ablation(
            "template-mean",
            _group_z,
            note="template mean (each head's mean z over the corrupted prompts of the prompt's "
            "template, same position: Wang et al.'s mean ablation)",
            table=TEMPLATE_MEAN,
            color="#9467bd",
        ),
    )
}
FROZEN_LN_SUFFIX = "-frozen-ln"


def variant(name: str, freeze_ln: bool) -> str:
    """The name of a kind's run with or without frozen LayerNorm: 'mean', 'mean-frozen-ln'."""
    return f"{name}{FROZEN_LN_SUFFIX}" if freeze_ln else name


def parse_variant(name: str) -> tuple[str, bool]:
    """'mean' -> ('mean', False); 'mean-frozen-ln' -> ('mean', True)."""
    if name.endswith(FROZEN_LN_SUFFIX):
        return name[: -len(FROZEN_LN_SUFFIX)], True
    return name, False


def _text_ablations() -> tuple[str, ...]:
    return tuple(name for name, kind in KINDS.items() if kind.on_text)


def _variant_names() -> frozenset[str]:
    return frozenset(variant(name, frozen) for name in KINDS for frozen in (False, True))


# The kinds running text can take (the schema's ablations, engine.frozen_ln, figures.ablation,
# mechanisms.neurons.ablation), those a task can (tasks.<name>.ablations), and every name a path
# may hold for an ablation (ablation/<a>/, summary/<a>.zarr).
TEXT_ABLATIONS = _text_ablations()
TASK_ABLATIONS = tuple(KINDS)
VARIANT_NAMES = _variant_names()
# tasks.<name>.ablations: every kind, and each with frozen LayerNorm.
TASK_VARIANTS = tuple(variant(name, frozen) for frozen in (False, True) for name in KINDS)


def register(kind: Ablation) -> None:
    """Add a kind defined outside this module (a plugin's, a test's) to the registry. The
    modules that read the registry when imported (variables.ABLATIONS, the captions' notes, the
    colours, the output folders) see it when imported after; the engine reads it at each call."""
    global TEXT_ABLATIONS, TASK_ABLATIONS, VARIANT_NAMES, TASK_VARIANTS
    if kind.name in KINDS or parse_variant(kind.name)[1]:
        raise ValueError(f"ablation {kind.name!r} is taken or names a frozen-LayerNorm variant")
    KINDS[kind.name] = kind
    TEXT_ABLATIONS, TASK_ABLATIONS, VARIANT_NAMES = (
        _text_ablations(),
        tuple(KINDS),
        _variant_names(),
    )
    TASK_VARIANTS = tuple(variant(name, f) for f in (False, True) for name in KINDS)


def ablation_kind(name: str) -> Ablation:
    """The kind of this name; ValueError naming the choices (a frozen-LayerNorm variant is not a
    kind: parse_variant first)."""
    kind = KINDS.get(name)
    if kind is None:
        raise ValueError(f"unknown ablation {name!r}: choose one of {', '.join(KINDS)}")
    return kind
