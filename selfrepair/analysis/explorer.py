"""What the head explorer shows (rule head_explorer), from arrays: per head, its summary
numbers with their intervals, and its top tokens by clean direct effect and by self-repair,
each with a window of the tokens before it, the correct next token, the head's per-token
values over the window and, for resample ablation, the resample partner's tokens. One path for
every dataset: a task's answers are put back on rows (answer_rows) and read as running text's
shards are; where the two differ (partner_rows, with_change, shown_numbers) it is by data.

Pure: no store I/O, no tokenizer (the stage decodes the ids these entries hold)."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np
import xarray as xr

from selfrepair.ablations import ROWS, TASK, ablation_kind, parse_variant

__all__ = [
    "RANKINGS",
    "SUMMARY_FIELDS",
    "TASK_FIELDS",
    "TOKEN_VALUES",
    "WINDOW_DIGITS",
    "WINDOW_VALUES",
    "answer_rows",
    "candidate_entry",
    "head_numbers",
    "readable",
    "metric_drop",
    "partner_label",
    "partner_rows",
    "rounded",
    "shown_numbers",
    "top_positions",
    "with_change",
]

# Per-token values of a head kept for each shown token (short name -> store variable).
TOKEN_VALUES = {"de": "de_clean", "sr": "self_repair", "dlogit": "logit_diff"}
# Per-token values kept over each shown token's whole window (colour and hover), to fewer digits.
WINDOW_VALUES = ("de", "sr")
WINDOW_DIGITS = 3
# The rankings of a head's top tokens (short name -> store variable, ranked high to low).
RANKINGS = {"de": "de_clean", "sr": "self_repair"}
# Summary numbers of a head (summarize_heads' variables); those the head_intervals store also
# holds carry their interval.
SUMMARY_FIELDS = tuple(
    f"{selection}_{name}"
    for selection in ("mean", "top")
    for name in ("de_clean", "logit_diff", "self_repair", "sr_heads", "sr_mlps", "sr_ln")
) + ("top_ln_share", "top_ln_share_clipped", "top_n_tokens")
DIGITS = 6  # significant digits of the numbers written into the page
# A task page's summary: on a task every scored token is an answer, so the "top" means equal the
# means over all tokens; one set is shown, the metric's change as its drop (clean - ablated), the
# sign of the task figures (Fig 2: drop of DE against drop of the metric).
TASK_FIELDS = (
    "mean_de_clean",
    "mean_metric_drop",
    "mean_self_repair",
    "mean_sr_heads",
    "mean_sr_mlps",
    "mean_sr_ln",
    "top_ln_share",
    "top_ln_share_clipped",
    "top_n_tokens",
)


# How a page names a token's Δlogit (ablated - clean) and its sign there: running text shows it as
# is, a task its metric's drop (clean - ablated, the task figures' sign).
CHANGES = {"dlogit": 1.0, "drop": -1.0}


def rounded(value: float, digits: int = DIGITS) -> float | None:
    """value to `digits` significant digits, None for NaN (JSON has no NaN)."""
    value = float(value)
    if math.isnan(value):
        return None
    return float(f"{value:.{digits}g}")


def readable(text: str) -> str:
    """A decoded token piece with its white space visible: space ·, newline ↵, tab ⇥."""
    return text.replace(" ", "·").replace("\n", "↵").replace("\t", "⇥").replace("\r", "␍")


def top_positions(values: np.ndarray, k: int) -> list[tuple[int, int]]:
    """The (batch, pos) of the k largest values of one head [batch, pos], largest first, ties by
    position (row-major); NaN (not measured) never."""
    flat = np.where(np.isnan(values), -np.inf, values).ravel()
    k = min(k, int(np.isfinite(flat).sum()))
    if k <= 0:
        return []
    candidates = np.argpartition(-flat, k - 1)[:k] if k < flat.size else np.arange(flat.size)
    order = candidates[np.lexsort((candidates, -flat[candidates]))]
    return [divmod(int(i), values.shape[1]) for i in order]


def candidate_entry(
    row: int,
    p: int,
    *,
    values: Mapping[str, float],
    windows: Mapping[str, np.ndarray],
    tokens: np.ndarray,
    context: int,
    partner_row: int | None = None,
    partner_kind: str = "resample",
) -> dict:
    """One shown token, the prediction at position p of global row `row`: its ids, the next
    token, the head's values there (short name -> value) and over the window of `context` tokens
    ending there (WINDOW_VALUES short name -> values, oldest first; longer arrays are cut to the
    window), and the partner's row if any, labelled as what it is (partner_label: the resample
    partner, or the corrupted prompt)."""
    start = max(0, p - context + 1)
    entry = {
        "row": int(row),
        "pos": int(p),
        "start": start,
        "ids": tokens[row, start : p + 1].tolist(),
        "next": int(tokens[row, p + 1]),
        **{key: rounded(v) for key, v in values.items()},
        "window": {
            key: [rounded(x, WINDOW_DIGITS) for x in windows[key][: p + 1 - start]]
            for key in WINDOW_VALUES
        },
    }
    if partner_row is not None:
        entry["partner"] = {
            "row": int(partner_row),
            "ids": tokens[partner_row, start : p + 1].tolist(),
            "next": int(tokens[partner_row, p + 1]),
            "label": partner_label(partner_kind, int(partner_row)),
        }
    return entry


def partner_label(ablation: str, row: int) -> str:
    """What a shown token's partner row is, by the ablation (a kind or its frozen-LayerNorm
    variant) that takes the head's z from it: its kind's partner_label, read from the registry
    at each call so that a kind registered after this module's import is labelled too."""
    kind = ablation_kind(parse_variant(ablation)[0])
    if not kind.partner_label:
        raise ValueError(f"ablation {kind.name!r} takes no partner row to label")
    return kind.partner_label.format(row=row)


def head_numbers(
    summary: Mapping[str, np.ndarray],
    intervals: Mapping[str, np.ndarray],
    layer: int,
    head: int,
    fields: Sequence[str] = SUMMARY_FIELDS,
) -> dict[str, dict]:
    """A head's summary numbers: field -> {value, and lo, hi where intervals has the field}.

    summary: field -> [layer, head]; intervals: field -> [layer, head, 2] (lo, hi).
    """
    out = {}
    for field in fields:
        number = {"value": rounded(summary[field][layer, head])}
        if field in intervals:
            lo, hi = intervals[field][layer, head]
            number.update(lo=rounded(lo), hi=rounded(hi))
        out[field] = number
    return out


def metric_drop(number: Mapping[str, float | None]) -> dict:
    """A Δlogit number (ablated - clean: value, and lo, hi if any) as the drop clean - ablated,
    its interval turned round."""
    flip = {"value": "value", "lo": "hi", "hi": "lo"}
    return {
        key: None if number[old] is None else -number[old]
        for key, old in flip.items()
        if old in number
    }


def shown_numbers(numbers: Mapping[str, dict], fields: Sequence[str]) -> dict[str, dict]:
    """A head's numbers (head_numbers) as a page shows them: `fields` in their order
    (SUMMARY_FIELDS; a task's TASK_FIELDS, the means over its answers once), mean_metric_drop
    the Δlogit's mean as its drop (metric_drop)."""
    derived = {"mean_metric_drop": lambda: metric_drop(numbers["mean_logit_diff"])}
    return {f: derived[f]() if f in derived else numbers[f] for f in fields}


def with_change(values: Mapping[str, float], change: str) -> dict[str, float]:
    """A token's values (TOKEN_VALUES short names) with its Δlogit shown as `change` (CHANGES:
    dlogit as is, drop = clean - ablated), in its place."""
    sign = CHANGES[change]
    return {
        (change if k == "dlogit" else k): (sign * v if k == "dlogit" else v)
        for k, v in values.items()
    }


def answer_rows(ds: xr.Dataset, names: Sequence[str] = tuple(TOKEN_VALUES.values())) -> xr.Dataset:
    """A task store's per-answer variables (analysis.tasks.scored_tokens: dims layer, head,
    token) put back on rows as a running-text shard holds them (dims layer, head, batch, pos;
    NaN where no answer), so one reader serves both: batch the prompts with an answer (their
    numbers), pos up to the last answer, and a resample ablation's partner prompt per prompt
    (`resample_source`, -1 where none) as a shard's."""
    prompts, batch = np.unique(ds.prompt.values, return_inverse=True)
    position = ds.position.values
    shape = (ds.sizes["layer"], ds.sizes["head"], len(prompts), int(position.max()) + 1)
    out = {}
    for name in names:
        grid = np.full(shape, np.nan, np.float32)
        grid[:, :, batch, position] = ds[name].transpose("layer", "head", "token").values
        out[name] = (("layer", "head", "batch", "pos"), grid)
    coords = {"batch": prompts}
    if "resample_source" in ds.coords:
        source = np.full(len(prompts), -1, np.int64)
        source[batch] = ds.resample_source.values
        coords["resample_source"] = ("batch", source)
    return xr.Dataset(out, coords=coords)


def partner_rows(
    ablation: str,
    tokens: np.ndarray,
    *,
    corrupted: np.ndarray | None = None,
    sources: Sequence[tuple[np.ndarray, np.ndarray]] = (),
) -> tuple[np.ndarray, np.ndarray | None]:
    """(the rows a page shows, each row's partner row among them or None), by where the
    ablation's kind takes z from (its partner_pool in selfrepair.ablations): TASK, a task's corrupted prompts, appended
    after its prompts; ROWS, the partner each measured row was given (sources: (rows, their
    partner rows) per store, its batch and resample_source), -1 where none; else none.

    Args:
        ablation: the ablation (a kind, or its frozen-LayerNorm variant).
        tokens: the dataset's rows [row, tok] (tokens.zarr, or a task's prompts).
        corrupted: a task's corrupted prompts [row, tok], row i paired with prompt i.
        sources: the ROWS partners the ablate stores record.
    """
    n = tokens.shape[0]
    pool = ablation_kind(parse_variant(ablation)[0]).partner_pool
    if pool == TASK:
        if corrupted is None:
            raise ValueError("an ablation that takes z from corrupted prompts needs a task's")
        return np.concatenate([tokens, corrupted]), n + np.arange(n)
    if pool == ROWS and sources:
        partner = np.full(n, -1, np.int64)
        for rows, given in sources:
            partner[np.asarray(rows)] = given
        return tokens, partner
    return tokens, None
