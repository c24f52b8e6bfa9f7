"""Caption text stating what a figure measured (no matplotlib import: the Snakefile uses it).

The pattern: workflow/report/figNN.rst describes what is drawn and ends with
``{{ snakemake.params.caption }}``; the rule's `caption` param is `measured(...)`, built from
the config, so the report says which models, ablation, how many tokens and which selection
each figure shows, and which substitutions were made.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from selfrepair.ablations import KINDS
from selfrepair.config import top_count

__all__ = [
    "ABLATION_NOTES",
    "Selection",
    "measured",
    "metric_sentence",
    "SOLVED_TOP1",
    "rmsnorm_notes",
    "task_description",
    "task_headline",
    "unsolved_note",
]

# What each ablation replaces a head's z with, as a task's caption says it.
ABLATION_NOTES = {name: kind.note for name, kind in KINDS.items()}
# The clean model solves a task when the answer is its top prediction for at least this share of
# the answers; below it, every figure's title and caption says plainly that it does not (a
# self-repair figure of a task the model cannot do is about noise, not the task's circuit).
SOLVED_TOP1 = 0.5


@dataclass(frozen=True)
class Selection:
    """Which tokens a figure averages over or shows."""

    top_fraction: float | None  # None: all tokens
    n_tokens: int  # tokens per model

    def describe(self) -> str:
        if self.top_fraction is None:
            return f"all {self.n_tokens:,} tokens"
        n_top = top_count(self.n_tokens, self.top_fraction)
        return (
            f"each head's top {self.top_fraction:.0%} of tokens by clean direct effect "
            f"({n_top:,} of {self.n_tokens:,} tokens)"
        )


def measured(
    *,
    models: Sequence[str],
    ablations: Sequence[str],
    n_tokens: int,
    selection: str,
    substitutions: Sequence[str] = (),
    extra: Sequence[str] = (),
) -> str:
    """One paragraph of reStructuredText: models, ablation(s), tokens, selection,
    substitutions (each a sentence such as 'tiny-pythia L3H1 is a substitute for pythia-410m
    L22H11.') and any extra sentences."""
    parts = [
        f"**Measured.** Model{'s' if len(models) > 1 else ''}: {', '.join(models)}.",
        f"Ablation{'s' if len(ablations) > 1 else ''}: {', '.join(ablations)}.",
        f"Tokens: {n_tokens:,} per model.",
        f"Selection: {selection}.",
    ]
    parts += [s if s.endswith(".") else s + "." for s in (*substitutions, *extra)]
    return " ".join(parts)


def unsolved_note(numbers: Mapping[str, float | int | str]) -> str:
    """'the clean model does not solve this task (answer top-1 1%)' when the answer is its top
    prediction for less than SOLVED_TOP1 of the answers (clean_metric's numbers), else ''."""
    if float(numbers["top1"]) >= SOLVED_TOP1:
        return ""
    return (
        f"the clean model does not solve this task (answer top-1 {float(numbers['top1']):.0%}, "
        f"below {SOLVED_TOP1:.0%})"
    )


def task_headline(numbers: Mapping[str, Any], model: str, task: str, ablation: str) -> str:
    """A task figure's title: model, task, ablation and the clean metric (clean_metric's
    numbers), led by 'the clean model does not solve this task' where it does not
    (unsolved_note)."""
    note = unsolved_note(numbers)
    text = f"{note[0].upper()}{note[1:]}. " if note else ""
    text += f"{model} on {task}, {ablation} ablation. Clean: mean {numbers['label']} "
    text += f"{numbers['mean']:.3g}" + ("" if note else f", answer top-1 {numbers['top1']:.0%}")
    if "above_counterfactual" in numbers:
        text += f", above counterfactual {numbers['above_counterfactual']:.0%}"
    return text


def metric_sentence(numbers: Mapping[str, float | int | str], baseline: str = "") -> str:
    """The caption's sentence on the clean metric (clean_metric's numbers).

    Args:
        numbers: clean_metric's dict.
        baseline: what the baseline positions are, for the loss comparison (induction).
    """
    note = unsolved_note(numbers)
    text = f"{note[0].upper()}{note[1:]}. " if note else ""
    text += (
        f"Clean model on the task: mean {numbers['label']} {numbers['mean']:.3g} over "
        f"{numbers['n_answers']:,} answers of {numbers['n_prompts']:,} prompts; the answer is "
        f"the top prediction for {numbers['top1']:.1%}"
    )
    if "above_counterfactual" in numbers:
        text += f" and above the counterfactual for {numbers['above_counterfactual']:.1%}"
    text += f"; loss {numbers['loss_answers']:.3g} nats on the answers"
    if "loss_baseline" in numbers:
        text += f" against {numbers['loss_baseline']:.3g} on {baseline or 'the baseline'}"
    if "top1_baseline" in numbers:  # metric.json files written before it lack it
        text += f", whose top-1 is {numbers['top1_baseline']:.1%}"
    return text


def task_description(spec: dict) -> str:
    """One sentence on what a task's prompts are (its config entry)."""
    kind, n = spec["type"], spec.get("n_prompts")
    if kind == "ioi" and (spec.get("templates"), spec.get("names")) == ("coax", "coax"):
        return (
            f"Task: IOI as CoAx (Gong 2026) draws it, {n} prompts of its template (ABBA) and "
            f"names, prompt seed {spec.get('prompt_seed', 'the run seed')}"
            f"{'' if spec.get('prepend_bos', True) else ', no BOS'}; answer the indirect "
            "object, counterfactual the subject, corrupted prompts ABC (three other names)"
        )
    if kind == "ioi":
        return (
            f"Task: IOI (Wang et al. 2022), {n} prompts of its 15 templates, ABBA and BABA "
            "alternating, names, places and objects that are single tokens in the model's "
            "tokenizer; answer the indirect object, counterfactual the subject, corrupted "
            f"prompts ABC (three other names){_ioi_options(spec)}"
        )
    if kind == "induction":
        return (
            f"Task: induction, {n} prompts of BOS and a random sequence of {spec['length']} "
            "tokens repeated; answers every token of the repeat after its first, corrupted "
            "prompts another sequence repeated"
        )
    return f"Task: the prompts of {spec['file']}, each answer at its prompt's last position"


def _ioi_options(spec: dict) -> str:
    """The IOI options an entry sets beside Wang et al.'s (none: empty, today's caption)."""
    notes = [f"{k} {spec[k]}" for k in ("templates", "names") if spec.get(k, "wang") != "wang"]
    if not spec.get("prepend_bos", True):
        notes.append("no BOS")
    if "prompt_seed" in spec:
        notes.append(f"prompt seed {spec['prompt_seed']}")
    return f" ({', '.join(notes)})" if notes else ""


def rmsnorm_notes(models: Mapping[str, str], neurons: bool = False) -> list[str]:
    """Caption sentences for the RMSNorm models with a gated MLP (Llama) a figure shows: what the
    paper's LayerNorm terms are for them, what of the paper does not transfer (centring over
    d_model), and (neurons: Figs 7, 8, 15) what a neuron of a gated MLP is. None without such
    models, so other captions are unchanged.

    Args:
        models: each such model -> its gated MLP's activation (config.json hidden_act).
        neurons: also define a gated MLP's neurons.
    """
    if not models:
        return []
    one = len(models) == 1
    names = ", ".join(models)
    notes = [
        f"{names} normalise{'s' if one else ''} with RMSNorm, not LayerNorm: for "
        f"{'it' if one else 'them'} the final-norm scale that every direct effect divides by, "
        "and whose change is the LayerNorm part of self-repair (Eq. 2), is the RMSNorm scale "
        "sqrt(mean(x²) + ε) of the final residual stream x, with no mean subtracted. So the "
        "paper's centring of each component's output over d_model (LayerNorm models) does not "
        f"apply: {'its' if one else 'their'} direct effects are uncentred, and still sum to the "
        "correct-token logit, centred over the vocabulary as for every model"
    ]
    if neurons:
        notes += [
            f"{model}'s MLP is gated: neuron n's activation is {act}(x · W_gate[:, n]) × "
            "(x · W_in[:, n]) on the normalised input x (transformers' gate_proj and up_proj; "
            "TransformerLens' hook_post), and its output row W_out[n] is column n of down_proj"
            for model, act in models.items()
        ]
    return notes
