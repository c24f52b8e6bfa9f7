"""What a task's figures and explorer page say (issue 36, defect 4): the unsolved task said in the
title and caption, the repairer heatmap's noisy shares masked and clipped, and the task page's
data (partner, sign, one answer row, clean metric and counterfactual). Synthetic inputs only."""

from __future__ import annotations

import numpy as np
import pytest
import xarray as xr

from selfrepair.plots.captions import SOLVED_TOP1, metric_sentence, unsolved_note

NUMBERS = {
    "label": "correct-token logit",
    "mean": 1.25,
    "top1": 0.01,
    "n_answers": 120,
    "n_prompts": 12,
    "loss_answers": 6.5,
}


def test_unsolved_note_says_so_below_the_threshold_only():
    assert unsolved_note(NUMBERS) == (
        "the clean model does not solve this task (answer top-1 1%, below 50%)"
    )
    assert unsolved_note({**NUMBERS, "top1": SOLVED_TOP1}) == ""
    assert unsolved_note({**NUMBERS, "top1": 0.93}) == ""


def test_metric_sentence_leads_with_the_unsolved_task():
    text = metric_sentence(NUMBERS)
    assert text.startswith("The clean model does not solve this task (answer top-1 1%")
    assert "top prediction for 1.0%" in text
    assert "does not solve" not in metric_sentence({**NUMBERS, "top1": 0.9})


def test_metric_sentence_gives_the_loss_and_top1_of_both_halves():
    """Induction: the answers (the repeat) beside the baseline (the first copy), loss and top-1."""
    halves = {**NUMBERS, "top1": 0.8, "loss_baseline": 7.25, "top1_baseline": 0.004}
    text = metric_sentence(halves, "the first copy of the same tokens")
    assert "top prediction for 80.0%" in text
    assert "loss 6.5 nats on the answers against 7.25 on the first copy" in text
    assert "whose top-1 is 0.4%" in text


def test_headline_leads_with_the_unsolved_task(tmp_path):
    from selfrepair.plots.captions import task_headline
    from selfrepair.stages.records import write_json
    from selfrepair.stages.summaries import task_title

    title = task_headline(NUMBERS, "m", "mine", "corrupted")
    assert title.startswith("The clean model does not solve this task (answer top-1 1%")
    assert "m on mine, corrupted ablation" in title
    assert title.count("top-1") == 1  # said once
    solved = {**NUMBERS, "top1": 0.8}
    assert task_headline(solved, "m", "mine", "corrupted").startswith("m on mine, corrupted")
    # the stage reads the task_clean JSON the rule's `task` param names (checked: read_json)
    path = tmp_path / "metric.json"
    write_json(path, NUMBERS)
    task = {"task": "mine", "ablation": "corrupted", "metric": str(path)}
    assert task_title(task, "m") == title
    assert task_title(None, "m") is None


def _repairs(self_repair: np.ndarray) -> tuple[xr.DataArray, xr.DataArray]:
    """top_share and top_self_repair of 2 layers x 2 heads; each head's LN share 0.3 / its SR."""
    from selfrepair.variables import component_names

    names = component_names(2, 2)
    sr = xr.DataArray(self_repair.reshape(2, 2), dims=("layer", "head"))
    share = np.full((2, 2, len(names)), np.nan)
    share[..., -1] = 0.3 / sr.values
    return xr.DataArray(share, dims=("layer", "head", "component"), coords={"component": names}), sr


def test_small_self_repair_is_relative_to_the_largest_head():
    from selfrepair.analysis.tasks import small_self_repair

    _, sr = _repairs(np.array([2.0, -0.05, 0.3, np.nan]))
    assert small_self_repair(sr).values.tolist() == [[False, True], [False, False]]
    assert not small_self_repair(sr * 0).values.any()  # nothing measured to compare: none small


def test_task_repairer_heatmap_masks_near_zero_heads_and_clips_to_one():
    """Shares of 0.3 / 0.05 = 6 once coloured the figure; now that row is grey and the scale
    ends at 1, the colour bar saying so."""
    from selfrepair.analysis.tasks import SHARE_LIMIT, small_self_repair
    from selfrepair.plots.repair import repair_heatmap

    share, sr = _repairs(np.array([2.0, -0.05, 0.3, 0.6]))
    fig = repair_heatmap(
        {"m": share}, selection="answers", masked={"m": small_self_repair(sr)}, limit=SHARE_LIMIT
    )
    ax = fig.axes[0]
    image = ax.images[0]
    values = np.ma.filled(image.get_array(), np.nan)
    assert np.isnan(values[1]).all()  # L0H1 masked
    assert np.nanmax(np.abs(values)) == pytest.approx(1.0)  # 0.3 / 0.3 the largest left
    assert (image.norm.vmin, image.norm.vmax) == (-1.0, 1.0)
    assert [t.get_text() for t in ax.get_yticklabels()][1] == "L0H1 (masked)"
    assert "clipped to [-1, 1]" in fig.axes[1].get_ylabel()


def two_prompt_task(de: np.ndarray) -> xr.Dataset:
    """A task_ablate store of one head on two prompts, answers where de is not NaN; resample's
    partner of prompt i is 1 - i."""
    prompt, position = np.nonzero(~np.isnan(de))
    values = de[prompt, position][None, None]
    store = xr.Dataset(
        {
            n: (("layer", "head", "token"), values)
            for n in ("de_clean", "self_repair", "logit_diff")
        },
        coords={"prompt": ("token", prompt), "position": ("token", position)},
    )
    return store.assign_coords(resample_source=("token", 1 - prompt))


def test_a_corrupted_partner_is_called_the_corrupted_prompt():
    """Under corrupted ablation the head's z comes from the corrupted prompt: the page once
    called it 'resample partner row N' (N an index into prompts + corrupted)."""
    from selfrepair.stages.explorer import Rows, _heads_data

    tokens = np.arange(4 * 6).reshape(4, 6)  # rows 0, 1 the prompts, 2, 3 their corrupted
    de = np.array([[0.0, 3.0, np.nan, np.nan, np.nan], [1.0, 0.5, np.nan, np.nan, np.nan]])
    rows = Rows(label="m on task t", tokens=tokens[:2], corrupted=tokens[2:], change="drop")

    def top(ablation):
        (entry,) = _heads_data([two_prompt_task(de)], rows, ablation=ablation, k=1, context=2)[
            "0.0"
        ]["de"]
        return entry

    corrupted = top("corrupted")
    assert corrupted["partner"]["ids"] == [12, 13] and corrupted["partner"]["next"] == 14
    assert corrupted["partner"]["label"].startswith("corrupted prompt")
    assert "resample" not in corrupted["partner"]["label"]
    assert corrupted["drop"] == -3.0 and "dlogit" not in corrupted
    assert top("resample")["partner"]["label"] == "resample partner row 1"
    assert "partner" not in top("mean") and "partner" not in top("zero")


def test_task_numbers_show_the_answers_once_and_the_drop_with_the_figures_sign():
    from selfrepair.analysis.explorer import SUMMARY_FIELDS, TASK_FIELDS, shown_numbers
    from selfrepair.plots.explorer import TASK_FIELD_LABELS

    numbers = {f: {"value": float(i)} for i, f in enumerate(SUMMARY_FIELDS)}
    numbers["mean_logit_diff"] = {"value": 0.25, "lo": 0.1, "hi": 0.4}  # ablated - clean
    assert shown_numbers(numbers, SUMMARY_FIELDS) == numbers  # running text's: as they are
    shown = shown_numbers(numbers, TASK_FIELDS)
    assert tuple(shown) == TASK_FIELDS == tuple(TASK_FIELD_LABELS)
    assert not any(f.startswith("top_") and f[4:] in {g[5:] for g in shown} for f in shown)
    assert shown["mean_metric_drop"] == {"value": -0.25, "lo": -0.4, "hi": -0.1}
    assert "clean − ablated" in TASK_FIELD_LABELS["mean_metric_drop"]
    assert all("top tokens" not in label for label in TASK_FIELD_LABELS.values())


def test_task_page_has_a_colour_legend_the_clean_metric_and_its_labels():
    from selfrepair.plots.explorer import TASK_FIELD_LABELS, explorer_html

    data = {
        "model": "m on task t",
        "tokens_per_head": 3,
        "context": 4,
        "task": {"metric": "logit difference", "clean": "Clean: top-1 1%", "counterfactual": True},
    }
    page = explorer_html(data, TASK_FIELD_LABELS)
    assert 'id="legend"' in page and "negative" in page and "positive" in page
    assert '"clean":"Clean: top-1 1%"' in page and "counterfactual answer" in page
    assert "metric drop (clean − ablated)" in page
    assert '"mean_metric_drop"' in page and '"top_self_repair":' not in page


def old_task_heads(store, rows, ablation, *, k, context):
    """The task explorer's own path before issue 35 (f884b3c stages.explorer._task_heads,
    _task_partners and analysis.explorer.head_tokens), its ranking a full sort: the answers
    on a [prompt, pos] grid. It labelled the partner by the ablation's name, a KeyError for a
    frozen-LayerNorm variant: here its kind's."""
    from selfrepair.ablations import ROWS, TASK, ablation_kind, parse_variant
    from selfrepair.analysis.explorer import RANKINGS, TOKEN_VALUES, candidate_entry

    n = rows.tokens.shape[0]
    pool = ablation_kind(parse_variant(ablation)[0]).partner_pool
    tokens, partner = rows.tokens, None
    if pool == TASK:
        tokens, partner = np.concatenate([rows.tokens, rows.corrupted]), n + np.arange(n)
    elif pool == ROWS:
        partner = np.full(n, -1, np.int64)
        partner[store.prompt.values] = store.resample_source.values
    where = (store.prompt.values, store.position.values)
    out = {}
    for layer in range(store.sizes["layer"]):
        for head in range(store.sizes["head"]):
            values = {}
            for key, name in TOKEN_VALUES.items():
                grid = np.full((n, rows.tokens.shape[1] - 1), np.nan, np.float32)
                grid[where] = store[name].values[layer, head]
                values[key] = grid
            if np.isnan(values["de"]).all():
                continue
            values["drop"] = -values.pop("dlogit")
            rankings = {}
            for key in RANKINGS:
                cells = sorted(
                    (-float(v), b, p) for (b, p), v in np.ndenumerate(values[key]) if v == v
                )
                rankings[key] = []
                for _, b, p in cells[:k]:
                    start = max(0, p - context + 1)
                    entry = candidate_entry(
                        b,
                        p,
                        values={name: v[b, p] for name, v in values.items()},
                        windows={name: values[name][b, start : p + 1] for name in ("de", "sr")},
                        tokens=tokens,
                        context=context,
                        partner_row=None if partner is None else int(partner[b]),
                        partner_kind=parse_variant(ablation)[0],
                    )
                    if rows.counter is not None:
                        entry["counter"] = int(rows.counter[b, p])
                    rankings[key].append(entry)
            out[f"{layer}.{head}"] = rankings
    return out


@pytest.mark.parametrize("ablation", ["resample", "resample-frozen-ln", "corrupted", "mean"])
@pytest.mark.parametrize("context", [1, 3])
def test_a_task_page_reads_its_answers_as_running_text_reads_shards(ablation, context):
    """Issue 35: one explorer path. A task's store, put back on rows (answer_rows) and read as
    running text's shards are (merged candidates), shows every head's answers exactly as the
    task explorer's own path did: ranking, ties (by prompt, then position), windows, partner
    (resample partner, corrupted prompt or none), counterfactual and the drop's sign."""
    import json

    from selfrepair.analysis.explorer import TOKEN_VALUES
    from selfrepair.plots.explorer import TASK_FIELD_LABELS
    from selfrepair.stages.explorer import Rows, _heads_data

    rng = np.random.default_rng(3)
    n, width = 6, 9
    scored = rng.random((n, width - 1)) < 0.4
    scored[2] = False  # a prompt without answers
    scored[0, -1] = True  # an answer at the last position
    prompt, position = np.nonzero(scored)
    values = rng.normal(size=(3, 2, len(prompt))).astype(np.float32)
    values[0, 1, :4] = values[0, 1, 4]  # ties
    values[1, 0] = np.nan  # a head not measured
    store = xr.Dataset(
        {
            name: (("layer", "head", "token"), values * (i + 1))
            for i, name in enumerate(TOKEN_VALUES.values())
        },
        coords={"prompt": ("token", prompt), "position": ("token", position)},
    )
    store = store.assign_coords(resample_source=("token", ((prompt + 2) % n).astype(np.int64)))
    tokens = rng.integers(0, 50, size=(n, width))
    rows = Rows(
        label="m on task t",
        tokens=tokens,
        corrupted=tokens + 100,
        counter=rng.integers(0, 50, size=(n, width - 1)),
        change="drop",
        labels=TASK_FIELD_LABELS,
    )
    new = _heads_data([store], rows, ablation=ablation, k=4, context=context)
    old = old_task_heads(store, rows, ablation, k=4, context=context)
    assert "1.0" not in new and len(new) == 5
    assert json.dumps(new) == json.dumps(old)
