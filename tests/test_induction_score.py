"""Induction scores without ablation (issue 37): each head's prefix-matching attention on
repeated random tokens, from one hooked TransformerLens pass, against a slow loop over Hugging
Face's own attention weights (output_attentions) on tiny random GPT-2, Pythia and Llama models."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from selfrepair.tasks.induction import induction_heads, prefix_matching_score

LENGTH = 7


def slow_scores(hf_model, rows: np.ndarray, length: int) -> np.ndarray:
    """One forward pass per prompt; every (layer, head, repeat position) summed in a loop."""
    n_layers = hf_model.config.num_hidden_layers
    n_heads = hf_model.config.num_attention_heads
    total = np.zeros((n_layers, n_heads))
    count = 0
    for row in rows:
        with torch.no_grad():
            att = hf_model(torch.as_tensor(row[None]), output_attentions=True).attentions
        for q in range(length + 1, 2 * length):
            for layer in range(n_layers):
                for head in range(n_heads):
                    total[layer, head] += float(att[layer][0, head, q, q - length + 1])
            count += 1
    return total / count


def test_prefix_matching_score_by_hand():
    """Rows BOS a b c a b c: from the repeat's b (4) and c (5), b attends 2 ... (q - 2)."""
    pattern = np.zeros((2, 1, 2, 6, 6))
    pattern[0, 0, 0, 4, 2] = 1.0  # a perfect induction head on prompt 0
    pattern[0, 0, 0, 5, 3] = 1.0
    pattern[1, 0, 0, 4, 2] = 0.5
    pattern[:, 0, 1, :, 0] = 1.0  # a head on BOS only
    pattern[1, 0, 1, 5, 3] = 0.25
    got = prefix_matching_score(pattern, 3)
    np.testing.assert_allclose(got, [[(1 + 1 + 0.5 + 0) / 4, 0.25 / 4]])
    with pytest.raises(ValueError, match="no repeat of 4 tokens"):
        prefix_matching_score(pattern, 4)


@pytest.mark.parametrize("family", ["gpt2", "pythia", "llama"])
def test_induction_scores_equal_hugging_face_attention(family, tmp_path, monkeypatch):
    from test_training import random_hf_model

    from selfrepair.engine.induction import induction_scores
    from selfrepair.models.loading import load_local_checkpoint

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    model = random_hf_model(family)
    model.config._attn_implementation = "eager"  # attention weights, not a fused kernel
    path = tmp_path / f"{family}-tiny"
    model.save_pretrained(str(path))
    hooked = load_local_checkpoint(str(path))
    rng = np.random.default_rng(0)
    seqs = rng.integers(1, 101, (5, LENGTH))
    rows = np.concatenate([np.zeros((5, 1), np.int64), seqs, seqs[:, :-1]], 1)
    got = induction_scores(hooked, rows, LENGTH, batch_size=2)
    ref = slow_scores(model, rows, LENGTH)
    assert got.shape == (2, 4) and ref.std() > 0.005  # random heads: scores differ
    np.testing.assert_allclose(got, ref, atol=1e-5, rtol=0)


def test_induction_heads_above_a_threshold():
    scores = [[0.1, 0.45], [0.4, 0.9]]
    assert induction_heads(scores, 0.4) == [[0, 1], [1, 1]]  # above, not at
    assert induction_heads(scores, 0.95) == []


def test_expected_backups_named_by_induction_score(tmp_path):
    """tasks.<task>.expected_backups {induction_score_above: s} reads task_clean's metric.json;
    a list of heads is taken as it is."""
    from selfrepair.stages.records import write_json
    from selfrepair.stages.task_summaries import expected_heads

    metric = tmp_path / "metric.json"
    write_json(metric, {"top1": 0.9, "induction_scores": [[0.0, 0.7], [0.5, 0.2]]})
    assert expected_heads({"induction_score_above": 0.4}, str(metric)) == [[0, 1], [1, 0]]
    assert expected_heads([[1, 1]], "") == [[1, 1]]


@pytest.mark.slow
def test_demo_induction_metric_has_both_halves_and_the_scores(finished_run):
    """The demo's induction metric.json: loss and top-1 on the repeat (the answers) and on the
    first copy (the baseline), and every head's induction score, a share of attention in [0, 1]
    that equals a hooked pass over the run's own prompts and model."""
    import json

    from selfrepair.engine.induction import induction_scores
    from selfrepair.models.loading import load_local_checkpoint
    from selfrepair.stages.tasks import read_prompts

    run, _ = finished_run
    for model in ("tiny-gpt2", "tiny-pythia"):
        where = run / "results" / model / "tasks" / "induction"
        numbers = json.loads((where / "metric.json").read_text())
        assert {"loss_answers", "top1", "loss_baseline", "top1_baseline"} <= set(numbers)
        scores = np.array(numbers["induction_scores"])
        assert scores.shape == (4, 4) and (scores >= 0).all() and (scores <= 1).all()
        prompts = read_prompts(str(where / "prompts.zarr"))
        length = int(prompts.info["length"][0])
        hooked = load_local_checkpoint(str(run / "resources" / "models" / model))
        rows = prompts.tokens[:, : 2 * length].astype(np.int64)
        again = induction_scores(hooked, rows, length, batch_size=3)
        np.testing.assert_allclose(scores, again, atol=2e-6)
