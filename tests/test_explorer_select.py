"""The head explorer's selection (selfrepair.analysis.explorer) against a brute-force
recomputation on a small synthetic dataset, and the page's HTML holding no remote reference."""

from __future__ import annotations

import json
import math
import re

import numpy as np
import pytest
import xarray as xr

from selfrepair.analysis import explorer
from selfrepair.plots.explorer import explorer_html, index_html

N_ROWS, SEQ_LEN = 12, 9  # tokens [row, tok]; values [batch, pos] with pos = SEQ_LEN - 1


@pytest.fixture
def synthetic():
    rng = np.random.default_rng(3)
    tokens = rng.integers(0, 50, size=(N_ROWS, SEQ_LEN)).astype(np.int32)
    rows = np.arange(4, 10)  # the measured rows: a shard of global rows 4..9
    values = {
        key: rng.normal(size=(rows.size, SEQ_LEN - 1)).astype(np.float32)
        for key in explorer.TOKEN_VALUES
    }
    values["sr"][2, 3] = np.nan  # a token not measured never ranks
    partner = np.roll(rows, -1)
    return tokens, rows, values, partner


def brute_top(values: np.ndarray, k: int) -> list[tuple[int, int]]:
    cells = [
        (-float(values[b, p]), b, p)
        for b in range(values.shape[0])
        for p in range(values.shape[1])
        if not math.isnan(values[b, p])
    ]
    return [(b, p) for _, b, p in sorted(cells)[:k]]


@pytest.mark.parametrize("k", [1, 5, 48, 100])
def test_top_positions_equal_a_full_sort(synthetic, k):
    _, _, values, _ = synthetic
    for key in explorer.RANKINGS:
        assert explorer.top_positions(values[key], k) == brute_top(values[key], k)


def test_top_positions_break_ties_by_position_and_skip_unmeasured():
    values = np.array([[1.0, 2.0, 2.0], [np.nan, 2.0, 0.5]])
    assert explorer.top_positions(values, 3) == [(0, 1), (0, 2), (1, 1)]
    assert explorer.top_positions(values, 10) == brute_top(values, 10)
    assert explorer.top_positions(np.full((2, 2), np.nan), 3) == []


def shown_tokens(synthetic, ablation: str, k: int, context: int) -> dict[str, list[dict]]:
    """One head's top tokens as the explorer shows them (stages.explorer._heads_data: the
    shard's candidates, merged), the synthetic values a shard of rows 4..9 with its partners."""
    from selfrepair.stages.explorer import Rows, _heads_data

    tokens, rows, values, partner = synthetic
    dims = ("layer", "head", "batch", "pos")
    shard = xr.Dataset(
        {name: (dims, values[key][None, None]) for key, name in explorer.TOKEN_VALUES.items()},
        coords={"batch": rows, "resample_source": ("batch", partner)},
    )
    rows_of = Rows(label="toy", tokens=tokens)
    return _heads_data([shard], rows_of, ablation=ablation, k=k, context=context)["0.0"]


@pytest.mark.parametrize("context", [1, 3, 8, 30])
def test_shown_tokens_hold_each_tokens_window_next_token_values_and_partner(synthetic, context):
    tokens, rows, values, partner = synthetic
    k = 7
    shown = shown_tokens(synthetic, "resample", k, context)
    assert set(shown) == set(explorer.RANKINGS)
    for ranking, entries in shown.items():
        assert [(list(rows).index(e["row"]), e["pos"]) for e in entries] == brute_top(
            values[ranking], k
        )
        for e in entries:
            b, p = list(rows).index(e["row"]), e["pos"]
            window = [tokens[e["row"], j] for j in range(SEQ_LEN - 1) if p - context < j <= p]
            assert e["ids"] == window and e["start"] == p - len(window) + 1
            assert e["next"] == tokens[e["row"], p + 1]
            for key in explorer.TOKEN_VALUES:
                value = float(values[key][b, p])
                assert e[key] is None if np.isnan(value) else e[key] == pytest.approx(value, 1e-5)
            for key in explorer.WINDOW_VALUES:
                expected = [values[key][b, j] for j in range(e["start"], p + 1)]
                got = [np.nan if x is None else x for x in e["window"][key]]
                assert np.allclose(got, expected, rtol=1e-2, equal_nan=True)
            other = partner[b]
            assert e["partner"] == {
                "row": int(other),
                "ids": [int(tokens[other, j]) for j in range(e["start"], p + 1)],
                "next": int(tokens[other, p + 1]),
                "label": f"resample partner row {int(other)}",
            }
    without = shown_tokens(synthetic, "mean", k, context)
    assert all("partner" not in e for entries in without.values() for e in entries)


def test_head_numbers_carry_intervals_where_measured():
    summary = {f: np.arange(6, dtype=float).reshape(2, 3) + i for i, f in enumerate("ab")}
    intervals = {"b": np.stack([summary["b"] - 1, summary["b"] + 1], axis=-1)}
    summary["a"][1, 2] = np.nan
    numbers = explorer.head_numbers(summary, intervals, 1, 2, fields=("a", "b"))
    assert numbers == {"a": {"value": None}, "b": {"value": 6.0, "lo": 5.0, "hi": 7.0}}


def test_readable_pieces_show_white_space():
    assert explorer.readable(" def\n\tx") == "·def↵⇥x"
    assert explorer.rounded(0.123456789) == 0.123457 and explorer.rounded(float("nan")) is None


def test_page_is_self_contained_and_its_data_round_trips(synthetic):
    heads = shown_tokens(synthetic, "resample", 3, 4)
    data = {
        "model": "toy</script>",
        "ablations": ["resample"],
        "grid": {"resample": {"mean_self_repair": [[0.1]], "top_self_repair": [[None]]}},
        "numbers": {"resample": {"0.0": {"mean_self_repair": {"value": 0.1}}}},
        "heads": {"resample": {"0.0": heads}},
        "vocab": {str(i): f"t{i}</script>" for i in range(50)},
        "n_layers": 1,
        "n_heads": 1,
        "tokens_per_head": 3,
        "context": 4,
    }
    page = explorer_html(data)
    assert not re.search(r"(src|href)\s*=\s*[\"']?(https?:)?//", page)
    assert page.count("</script>") == 2  # the data's own '</script>' is escaped
    payload = re.search(r'id="explorer-data">(.*?)</script>', page, re.S).group(1)
    assert json.loads(payload)["heads"]["resample"]["0.0"] == heads
    assert 'href="a.html"' in index_html([("a", "a.html", 1000)])
