"""Which model and heads a figure shows: the paper's, or the configured substitute when this run
lacks them. One resolver (resolve_target, with target_problem saying why a choice cannot be used)
serves the `figures` section (figure_target) and the `mechanisms` section
(selfrepair.config.mechanisms), so that both check heads the same way."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

from selfrepair.config.errors import ConfigError
from selfrepair.config.models import (
    Head,
    missing_head,
    model_dims,
    model_entries,
    parallel_blocks,
    text_models,
)
from selfrepair.config.picks import pick_spec
from selfrepair.variables import head_label

__all__ = [
    "FigureTarget",
    "as_heads",
    "check_distinct_targets",
    "check_target_heads",
    "figure_ablation",
    "figure_target",
    "figure_targets",
    "frozen_ln_ablation",
    "other_models",
    "resolve_target",
    "target_problem",
    "target_with_pick",
]


def as_heads(value: Any) -> tuple[Head, ...]:
    """[[layer, head], ...] from the config or a JSON record, as a tuple of int pairs."""
    return tuple((int(layer), int(head)) for layer, head in (value or []))


@dataclass(frozen=True)
class FigureTarget:
    """The model (and heads) a figure shows: the paper's, or the configured substitute when the
    paper's model or heads are not in this run. A substitute picked at run time (`pick`) has no
    heads until resolved() with its pick record (selfrepair.analysis.substitutes)."""

    key: str  # figures: the key under `figures` (fig03); mechanisms: the full config key
    model: str
    heads: tuple[Head, ...]
    paper_model: str
    paper_heads: tuple[Head, ...]
    reason: str | None = None  # why the paper's choice is not shown; None: it is
    pick: dict[str, Any] | None = field(default=None, compare=False)  # pick_spec()
    selected_by: str | None = None  # the pick record's description, once resolved

    @property
    def substituted(self) -> bool:
        return self.reason is not None

    @property
    def picked(self) -> bool:
        """Whether the heads are picked at run time (then read them from the pick record)."""
        return self.pick is not None

    def label(self, model: str, heads: tuple[Head, ...]) -> str:
        names = ", ".join(head_label(layer, head) for layer, head in heads)
        return f"{model} {names}" if names else model

    def resolved(self, record: dict[str, Any]) -> FigureTarget:
        """This target with the heads of its pick record (pick_substitute's JSON)."""
        if record.get("model") != self.model:
            raise ValueError(f"pick record for {record.get('model')!r}, target is {self.model!r}")
        return replace(self, heads=as_heads(record["heads"]), selected_by=record["description"])

    def substitution(self) -> str | None:
        """The sentence a caption carries when a substitute is shown."""
        if not self.substituted:
            return None
        if self.picked and self.selected_by is None:
            raise ValueError(f"{self.key}: the substitute is picked at run time; resolve it first")
        shown = self.label(self.model, self.heads)
        if self.selected_by:
            shown += f", {self.selected_by},"
        return (
            f"{shown} is a substitute for the paper's "
            f"{self.label(self.paper_model, self.paper_heads)} ({self.reason})."
        )

    def announcement(self) -> str | None:
        """What the run says at its start about a substitute: substitution(), or for a pick not
        yet made, the rule that will make it."""
        if self.picked and self.selected_by is None:
            pick = self.pick
            heads = f"{pick['n']} head{'s' if pick['n'] > 1 else ''}"
            rank = f" from rank {pick['rank']}" if pick["rank"] > 1 else ""
            return (
                f"{self.model}'s {heads} by {pick['criterion']}{rank}, picked at run time, "
                f"in place of the paper's {self.label(self.paper_model, self.paper_heads)} "
                f"({self.reason})."
            )
        return self.substitution()

    def as_params(self) -> dict[str, Any]:
        """Plain types for Snakemake params (scripts rebuild nothing from it but read it)."""
        return {
            "key": self.key,
            "model": self.model,
            "heads": [list(h) for h in self.heads],
            "paper_model": self.paper_model,
            "paper_heads": [list(h) for h in self.paper_heads],
            "reason": self.reason,
            "substitution": None if self.picked and not self.selected_by else self.substitution(),
            "pick": self.pick,
        }


def target_with_pick(target: dict[str, Any], record: dict[str, Any]) -> dict[str, Any]:
    """A figure script's target params (as_params()) with the heads of its pick record and the
    caption sentence naming them and the value that selected them."""
    base = FigureTarget(
        target["key"],
        target["model"],
        as_heads(target["heads"]),
        target["paper_model"],
        as_heads(target["paper_heads"]),
        reason=target["reason"],
        pick=target["pick"],
    )
    return base.resolved(record).as_params()


# --- The resolver, shared by figures and mechanisms ------------------------------------------


def target_problem(
    entries: dict[str, dict[str, Any]],
    model: str,
    heads: tuple[Head, ...],
    need_measured: bool = False,
    mlp_layer: int | None = None,
) -> str | None:
    """Why (model, heads) cannot be used in this run, or None. Head ranges are checked where the
    config knows the model's size (model_dims: trained models, checkpoints by path, the paper's
    hub models); other hub models' heads are checked once their size is known (for figures,
    check_target_heads when the figure is drawn).

    Args:
        entries: the run's model entries (model_entries).
        model: the model to show.
        heads: its heads to show.
        need_measured: the figure reads the ablation stage's stores, so a model entry's `heads`
            list must include them.
        mlp_layer: that MLP layer must read each head's output (it is above it, or in the same
            sequential block); None: no MLP is involved.
    """
    if model not in entries:
        return f"{model} is not among this run's models"
    entry = entries[model]
    dims = model_dims(entry)
    measured = {tuple(h) for h in entry.get("heads", [])}
    # The key's fault, not the figure's; checked before any head, so also for picked heads.
    if mlp_layer is not None and dims is not None and not -dims[0] <= mlp_layer < dims[0]:
        raise ConfigError(
            f"config key mechanisms.neurons.mlp_layer: {model} has no MLP layer "
            f"{mlp_layer} ({dims[0]} layers); use -{dims[0]} .. {dims[0] - 1}"
        )
    for layer, head in heads:
        if dims is not None and (missing := missing_head(model, layer, head, *dims)):
            return missing
        if need_measured and measured and (layer, head) not in measured:
            return f"{head_label(layer, head)} is not among the heads measured in {model}"
        if mlp_layer is not None and dims is not None:
            mlp = mlp_layer % dims[0]
            parallel = parallel_blocks(entry)
            if mlp < layer or (mlp == layer and parallel):
                return (
                    f"the MLP of layer {mlp} does not read the output of {head_label(layer, head)} in "
                    f"{model}" + (" (parallel attention and MLP)" if parallel else "")
                )
    return None


def resolve_target(
    entries: dict[str, dict[str, Any]],
    spec: dict[str, Any],
    key: str,
    base_key: str | None = None,
    name: str | None = None,
    **checks: Any,
) -> FigureTarget:
    """The paper's model and heads of `spec`, or its substitute when this run lacks them (heads
    given, or picked at run time: pick_spec); ConfigError in one line naming `key` when neither
    can be used.

    Args:
        entries: the run's model entries (model_entries).
        spec: the target's mapping: model, heads, substitute.
        key: its config key, named by the errors (figures.fig03, mechanisms.neurons.fig08[1]).
        base_key: the figure key (fig08 for mechanisms.neurons.fig08[1]); default the last part
            of `key`.
        name: the FigureTarget's key; default `key`.
        **checks: target_problem's need_measured and mlp_layer.
    """
    name = key if name is None else name
    paper_model, paper_heads = spec["model"], as_heads(spec.get("heads"))
    reason = target_problem(entries, paper_model, paper_heads, **checks)
    if reason is None:
        return FigureTarget(name, paper_model, paper_heads, paper_model, paper_heads)
    sub = spec.get("substitute")
    if sub is None:
        raise ConfigError(
            f"config key {key}.model: {reason}; add it to models or set {key}.substitute"
        )
    sub_heads = as_heads(sub.get("heads"))
    sub_reason = target_problem(entries, sub["model"], sub_heads, **checks)
    if sub_reason is not None:
        raise ConfigError(f"config key {key}.substitute: {sub_reason}")
    if "pick" in sub:
        mlp_layer = checks.get("mlp_layer")
        entry = entries[sub["model"]]
        pick = pick_spec(
            key,
            base_key or key.rsplit(".", 1)[-1],
            sub,
            paper_heads,
            entry,
            mlp_layer=mlp_layer,
            parallel=parallel_blocks(entry) if mlp_layer is not None else None,
        )
        return FigureTarget(name, sub["model"], (), paper_model, paper_heads, reason, pick)
    if paper_heads and not sub_heads:
        raise ConfigError(
            f"config key {key}.substitute.heads: missing; name the heads of "
            f"{sub['model']} to show in place of the paper's, or pick them (config/README.md)"
        )
    return FigureTarget(name, sub["model"], sub_heads, paper_model, paper_heads, reason)


def check_target_heads(target: dict[str, Any], n_layers: int, n_heads: int) -> None:
    """A figure's heads (FigureTarget.as_params()) against the model's size, known once its
    data are read (hub models); ConfigError naming the key otherwise."""
    key = f"figures.{target['key']}" + (".substitute" if target["substitution"] else "")
    for layer, head in target["heads"]:
        if missing := missing_head(target["model"], layer, head, n_layers, n_heads):
            raise ConfigError(f"config key {key}.heads: {missing}")


def check_distinct_targets(key: str, targets: list[FigureTarget]) -> None:
    """The panels of a list-valued figure (mechanisms.neurons.fig08) show different heads, also
    after substitution.

    Args:
        key: the figure's config key.
        targets: its resolved targets, in config order.
    """
    seen: dict[tuple[str, Head], int] = {}
    for index, target in enumerate(targets):
        for head in target.heads:
            if (target.model, head) in seen:
                raise ConfigError(
                    f"config key {key}[{index}]: {target.model} {head_label(*head)} is already "
                    f"shown by {key}[{seen[(target.model, head)]}]; give each entry another head "
                    "or remove one"
                )
            seen[(target.model, head)] = index


# --- The `figures` section -----------------------------------------------------------------


def figure_target(config: dict[str, Any], key: str) -> FigureTarget:
    """figures.<key> resolved against the run's models: resolve_target with the measured-heads
    check, since every single-model figure reads the ablation stage's stores.

    Args:
        config: the validated workflow config.
        key: the figure's key under `figures`, e.g. fig03.
    """
    entries = text_models(model_entries(config))  # a tasks_only model has no figures
    spec = config.get("figures", {}).get(key)
    if not isinstance(spec, dict) or "model" not in spec:
        raise ConfigError(f"config key figures.{key}.model: missing; name the model to show")
    return resolve_target(entries, spec, f"figures.{key}", key, name=key, need_measured=True)


def figure_targets(config: dict[str, Any]) -> dict[str, FigureTarget]:
    """Every figures.<key> that names a model (the single-model figures), resolved."""
    return {
        key: figure_target(config, key)
        for key, spec in config.get("figures", {}).items()
        if isinstance(spec, dict) and "model" in spec
    }


def other_models(config: dict[str, Any]) -> list[str]:
    """The models of Figs 21-24: figures.fig21_24.models, or (null) every model of the run
    except the one Fig 2 shows."""
    entries = text_models(model_entries(config))  # a tasks_only model has no figures
    chosen = config.get("figures", {}).get("fig21_24", {}).get("models")
    if chosen is None:
        shown = figure_target(config, "fig02").model
        return [m for m in entries if m != shown]
    for i, model in enumerate(chosen):
        if model not in entries:
            raise ConfigError(
                f"config key figures.fig21_24.models[{i}]: {model} is not among this run's models"
            )
    return list(chosen)


def frozen_ln_ablation(config: dict[str, Any]) -> str | None:
    """The ablation whose frozen-LayerNorm variant the frozen-LN figure compares with:
    figures.ablation when engine.frozen_ln runs it, else the first of engine.frozen_ln; None
    when no frozen variant is run."""
    frozen = config.get("engine", {}).get("frozen_ln", [])
    shown = config.get("figures", {}).get("ablation", "resample")
    if shown in frozen:
        return shown
    return frozen[0] if frozen else None


def figure_ablation(config: dict[str, Any]) -> str:
    """figures.ablation, which must be one of the run's ablations."""
    shown = config.get("figures", {}).get("ablation", "resample")
    if shown not in config.get("ablations", []):
        raise ConfigError(
            f"config key figures.ablation: {shown} is not among ablations "
            f"{config.get('ablations')}; add it there or show one of those"
        )
    return shown
