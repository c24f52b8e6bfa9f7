"""Caption text stating what a figure measured (no matplotlib import: the Snakefile uses it).

The pattern: workflow/report/figNN.rst describes what is drawn and ends with
``{{ snakemake.params.caption }}``; the rule's `caption` param is `measured(...)`, built from
the config, so the report says which models, ablation, how many tokens and which selection
each figure shows, and which substitutions were made.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from selfrepair.config import top_count

__all__ = ["Selection", "measured"]


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
