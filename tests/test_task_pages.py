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


def test_a_corrupted_partner_is_called_the_corrupted_prompt():
    """Under corrupted ablation the head's z comes from the corrupted prompt: the page once
    called it 'resample partner row N' (N an index into prompts + corrupted)."""
    from selfrepair.analysis.explorer import head_tokens

    tokens = np.arange(4 * 6).reshape(4, 6)  # rows 0, 1 the prompts, 2, 3 their corrupted
    de = np.array([[0.0, 3.0, np.nan, np.nan, np.nan], [1.0, 0.5, np.nan, np.nan, np.nan]])
    values = {"de": de, "sr": de, "drop": -de}
    kw = {"tokens": tokens, "rows": np.arange(2), "k": 1, "context": 2}
    (top,) = head_tokens(values, partner_rows=np.array([2, 3]), partner_kind="corrupted", **kw)[
        "de"
    ]
    assert top["partner"]["ids"] == [12, 13] and top["partner"]["next"] == 14
    assert top["partner"]["label"].startswith("corrupted prompt")
    assert "resample" not in top["partner"]["label"]
    assert top["drop"] == -3.0
    (resampled,) = head_tokens(values, partner_rows=np.array([1, 0]), **kw)["de"]
    assert resampled["partner"]["label"] == "resample partner row 1"
    assert all("partner" not in e for e in head_tokens(values, **kw)["de"])  # mean, zero


def test_task_numbers_show_the_answers_once_and_the_drop_with_the_figures_sign():
    from selfrepair.analysis.explorer import SUMMARY_FIELDS, TASK_FIELDS, task_numbers
    from selfrepair.plots.explorer import TASK_FIELD_LABELS

    numbers = {f: {"value": float(i)} for i, f in enumerate(SUMMARY_FIELDS)}
    numbers["mean_logit_diff"] = {"value": 0.25, "lo": 0.1, "hi": 0.4}  # ablated - clean
    shown = task_numbers(numbers)
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
