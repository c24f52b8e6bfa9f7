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


def test_headline_leads_with_the_unsolved_task(tmp_path):
    from selfrepair.stages.records import write_json
    from selfrepair.stages.task_figures import headline

    path = tmp_path / "metric.json"
    write_json(path, NUMBERS)
    title = headline("m", "mine", "corrupted", path)
    assert title.startswith("The clean model does not solve this task (answer top-1 1%")
    assert "m on mine, corrupted ablation" in title
    write_json(path, {**NUMBERS, "top1": 0.8})
    assert headline("m", "mine", "corrupted", path).startswith("m on mine, corrupted ablation")


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
