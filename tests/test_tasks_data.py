"""Tasks as data (selfrepair.tasks): the IOI prompts (names single tokens, the answer at the
right position, ABC prompts of the same length differing only in the names), induction rows,
a user's JSONL prompts and the one-line errors of each, padding; and the ROC-AUC against a hand
computation."""

from __future__ import annotations

import json

import numpy as np
import pytest
from tasks_helpers import ioi_tokenizer

from selfrepair.analysis.ranking import roc_auc
from selfrepair.tasks import TaskError, build_task
from selfrepair.tasks.induction import induction_prompts
from selfrepair.tasks.ioi import MIN_NAMES, NAMES, ioi_prompts
from selfrepair.tasks.jsonl import file_prompts, read_prompt_lines

BOS = 0


@pytest.fixture(scope="module")
def ioi():
    return ioi_tokenizer(), ioi_prompts(ioi_tokenizer(), 40, seed=3, bos_id=BOS)


def test_ioi_rows_hold_each_prompt_and_its_answer_at_the_scored_position(ioi):
    tok, p = ioi
    assert p.tokens.shape[0] == 40
    for i in range(40):
        length = int(p.length[i])
        row = p.tokens[i, :length].tolist()
        assert row[0] == BOS and (p.tokens[i, length:] == BOS).all()  # right padding
        (pos,) = np.flatnonzero(p.scored[i])
        assert pos == length - 2  # the prompt's last token predicts the answer
        answer, subject = row[-1], int(p.counter[i, pos])
        assert tok.decode(row[1:-1]) == p.text[i]
        io_name, s_name = tok.decode([answer]), tok.decode([subject])
        assert io_name.strip() in NAMES and s_name.strip() in NAMES and io_name != s_name
        assert io_name.startswith(" ") and len(tok.encode(io_name)) == 1
        # the indirect object once, the subject twice, where the info says
        assert row[:-1].count(answer) == 1 and row[:-1].count(subject) == 2
        assert row[p.info["io_position"][i]] == answer
        assert row[p.info["s1_position"][i]] == row[p.info["s2_position"][i]] == subject
        first = min(p.info["io_position"][i], p.info["s1_position"][i])
        assert (row[first] == answer) == bool(p.info["abba"][i])  # ABBA: IO mentioned first
        assert p.text[i].rstrip().endswith(" to") or p.text[i].endswith("said to")


def test_ioi_corrupted_prompts_are_abc_of_the_same_length(ioi):
    tok, p = ioi
    for i in range(40):
        length = int(p.length[i])
        clean, corrupted = p.tokens[i, : length - 1], p.corrupted[i, : length - 1]
        names = sorted(int(p.info[k][i]) for k in ("io_position", "s1_position", "s2_position"))
        differ = np.flatnonzero(clean != corrupted).tolist()
        assert differ == names  # only the three name positions change
        new = [int(corrupted[j]) for j in names]
        assert len(set(new)) == 3 and not set(new) & {int(clean[j]) for j in names}
        assert all(tok.decode([n]).strip() in NAMES for n in new)
    assert p.info["abba"].tolist() == [1, 0] * 20  # both orders, alternating


def test_ioi_is_seeded_and_fails_clearly_with_too_few_names():
    tok = ioi_tokenizer()
    a, b = ioi_prompts(tok, 10, 1, BOS), ioi_prompts(tok, 10, 1, BOS)
    assert np.array_equal(a.tokens, b.tokens)
    assert not np.array_equal(a.tokens, ioi_prompts(tok, 10, 2, BOS).tokens)
    few = ioi_tokenizer(vocab_size=300, n_names=3)
    with pytest.raises(TaskError, match=f"IOI needs at least {MIN_NAMES} names"):
        ioi_prompts(few, 10, 0, BOS)


def test_induction_rows_repeat_and_score_the_copyable_positions():
    tok = ioi_tokenizer()
    p = induction_prompts(tok, 6, length=7, seed=0, bos_id=BOS)
    assert p.tokens.shape == (6, 15) and (p.length == 15).all()
    for i in range(6):
        row = p.tokens[i]
        assert row[0] == BOS and (row[1:8] == row[8:15]).all()
        assert len(set(row[1:8].tolist())) == 7 and BOS not in row[1:].tolist()
        assert np.flatnonzero(p.scored[i]).tolist() == list(range(8, 14))
        assert np.flatnonzero(p.baseline[i]).tolist() == list(range(1, 7))
        for pos in range(8, 14):  # each answer is the token after its copy in the first half
            assert row[pos + 1] == row[pos + 1 - 7]
        other = p.corrupted[i]  # its last token is only a target: the clean row's
        assert (other[1:7] == other[8:14]).all() and not set(other[1:8]) & set(row[1:8])
    with pytest.raises(TaskError, match="lower length"):
        induction_prompts(tok, 2, length=len(tok), seed=0, bos_id=BOS)


def _jsonl(tmp_path, lines):
    path = tmp_path / "prompts.jsonl"
    path.write_text("\n".join(json.dumps(x) if isinstance(x, dict) else x for x in lines) + "\n")
    return path


def test_prompts_file_rows_are_padded_with_answers_and_partners(tmp_path):
    tok = ioi_tokenizer()
    path = _jsonl(
        tmp_path,
        [
            {"prompt": "Then, Mary and John went to the store. John gave a drink to",
             "answer": " Mary", "counterfactual": " John",
             "corrupted": "Then, Amy and Bob went to the store. Tim gave a drink to"},
            {"prompt": "Afterwards, Sara and Paul went to the park. Later, Paul gave a ring to",
             "answer": " Sara", "counterfactual": " Paul"},
            "",
        ],
    )  # fmt: skip
    p = file_prompts(tok, read_prompt_lines(path), BOS)
    assert p.tokens.shape[0] == 2 and p.length[0] != p.length[1]
    for i, (answer, counter) in enumerate([(" Mary", " John"), (" Sara", " Paul")]):
        (pos,) = np.flatnonzero(p.scored[i])
        assert tok.decode([p.tokens[i, pos + 1]]) == answer
        assert tok.decode([p.counter[i, pos]]) == counter
    assert not np.array_equal(p.corrupted[0], p.tokens[0])
    assert np.array_equal(p.corrupted[1], p.tokens[1])  # no partner given: itself


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ({"prompt": "Then, Mary went to"}, r'prompts.jsonl:2: no "answer"'),
        ('{"prompt": "x", "answer": ', "prompts.jsonl:2: not a JSON object"),
        ({"prompt": "x", "answer": " y", "colour": "red"}, "prompts.jsonl:2: unknown field"),
        ({"prompt": "Then, Mary went to", "answer": " New York"}, "prompts.jsonl:2: answer"),
        (
            {"prompt": "Then, Mary went to", "answer": " Mary", "corrupted": "Then, Mary to"},
            "prompts.jsonl:2: the corrupted prompt is",
        ),
    ],
)
def test_bad_prompt_lines_name_the_file_and_line(tmp_path, line, message):
    good = {"prompt": "Then, John went to", "answer": " John"}
    path = _jsonl(tmp_path, [good, line])
    with pytest.raises(TaskError, match=message):
        file_prompts(ioi_tokenizer(), read_prompt_lines(path), BOS)


def test_build_task_dispatches_on_the_type(tmp_path):
    tok = ioi_tokenizer()
    spec = {"type": "induction", "n_prompts": 3, "length": 4}
    assert build_task(spec, tok, 0, BOS).tokens.shape == (3, 9)
    assert build_task({"type": "ioi", "n_prompts": 4}, tok, 0, BOS).attrs["task_type"] == "ioi"
    with pytest.raises(TaskError, match="unknown task type"):
        build_task({"type": "sst2"}, tok, 0, BOS)


def test_roc_auc_is_the_share_of_pairs_ranked_right():
    scores = {"a": 3.0, "b": 2.0, "c": 2.0, "d": 1.0, "e": 0.0}
    # (b, d) against (a, c, e): b beats e, ties c (a half); d beats e: 2.5 of 6 pairs
    assert roc_auc(scores, ["b", "d"]) == pytest.approx(2.5 / 6)
    assert roc_auc(scores, ["a"]) == 1.0 and roc_auc(scores, ["e"]) == 0.0
    assert np.isnan(roc_auc(scores, [])) and np.isnan(roc_auc(scores, list(scores)))
    assert roc_auc(scores, ["b", "zz"]) == pytest.approx(2.5 / 4)  # unknown positives ignored


def test_repeat_rows_make_the_chosen_rows_a_random_sequence_repeated():
    """train.repeats: the drawn share of rows becomes BOS and a sequence of k distinct tokens of
    the vocabulary repeated to the row's end, k varying from row to row; the rest are as packed,
    the draw follows the seed, and 0 changes nothing."""
    from selfrepair.data.training import repeat_rows

    rows = np.arange(200 * 33).reshape(200, 33) + 1000
    rows[:, 0] = 0  # BOS
    vocabulary = np.arange(3, 60)
    out = repeat_rows(rows, 0.5, 3, vocabulary)
    changed = (out != rows).any(1)
    assert 70 < changed.sum() < 130
    periods = set()
    for row in out[changed]:
        assert row[0] == 0 and np.isin(row[1:], vocabulary).all()
        k = next(k for k in range(1, 33) if (row[1 + k :] == row[1 : 33 - k]).all())
        assert 2 <= k <= 16 and len(set(row[1 : 1 + k])) == k  # distinct: one successor each
        periods.add(k)
    assert len(periods) > 5  # no fixed offset to copy from
    assert (out[~changed] == rows[~changed]).all()
    assert (repeat_rows(rows, 0.5, 3, vocabulary) == out).all()
    assert not (repeat_rows(rows, 0.5, 4, vocabulary) == out).all()
    assert (repeat_rows(rows, 0.0, 3, vocabulary) == rows).all()


def test_repeat_rows_draw_each_length_within_repeat_lengths():
    """train.repeat_lengths: every induction row's sequence is between the shortest and the
    longest given, both drawn; a range outside the row or the vocabulary is refused."""
    from selfrepair.data.training import repeat_rows

    rows = np.zeros((300, 33), np.int64)
    vocabulary = np.arange(3, 60)
    out = repeat_rows(rows, 1.0, 0, vocabulary, lengths=(3, 5))
    periods = {next(k for k in range(1, 33) if (r[1 + k :] == r[1 : 33 - k]).all()) for r in out}
    assert periods == {3, 4, 5}
    assert (
        repeat_rows(rows, 0.5, 3, vocabulary, None) == repeat_rows(rows, 0.5, 3, vocabulary)
    ).all()
    for lengths in [(1, 4), (5, 4), (2, 33)]:
        with pytest.raises(ValueError, match="repeat lengths"):
            repeat_rows(rows, 0.5, 0, vocabulary, lengths)
    with pytest.raises(ValueError, match="the 4 ids drawn from"):
        repeat_rows(rows, 0.5, 0, np.arange(4), (2, 5))


def test_frequent_ids_are_the_most_counted_candidates_ties_by_id():
    """train.repeat_tokens: the n candidates counted most often in the rows (a hand count),
    ties broken by the smaller id, returned sorted; ids outside the candidates never chosen."""
    from selfrepair.data.training import frequent_ids

    rows = np.array([[0, 5, 5, 5, 7, 7, 9], [0, 0, 7, 3, 3, 8, 8]])
    # counts: 0 x3 (not a candidate), 5 x3, 7 x3, 3 x2, 8 x2, 9 x1, 4 x0
    candidates = np.array([3, 4, 5, 7, 8, 9])
    assert frequent_ids(rows, candidates, 2).tolist() == [5, 7]
    assert frequent_ids(rows, candidates, 3).tolist() == [3, 5, 7]  # 3 before 8: same count
    assert frequent_ids(rows, candidates, 6).tolist() == [3, 4, 5, 7, 8, 9]
    for n in (0, 7):
        with pytest.raises(ValueError, match="frequent ids"):
            frequent_ids(rows, candidates, n)


def test_strongest_induction_heads_are_the_top_k_scores_ties_by_layer_then_head():
    """ablation_sets.<name>: {induction_score_top: k}: the k largest induction scores (a hand
    ranking), a tie taken by the earlier layer, then head; listed in layer then head order."""
    from selfrepair.tasks.induction import strongest_induction_heads

    scores = [[0.10, 0.70, 0.05], [0.70, 0.20, 0.90], [0.30, 0.20, 0.01]]
    # ranked: (1,2) .9, (0,1) .7, (1,0) .7, (2,0) .3, (1,1) .2, (2,1) .2, ...
    assert strongest_induction_heads(scores, 1) == [[1, 2]]
    assert strongest_induction_heads(scores, 2) == [[0, 1], [1, 2]]  # (0,1) before its tie (1,0)
    assert strongest_induction_heads(scores, 3) == [[0, 1], [1, 0], [1, 2]]
    assert strongest_induction_heads(scores, 5) == [[0, 1], [1, 0], [1, 1], [1, 2], [2, 0]]
    for k in (0, 10):
        with pytest.raises(ValueError, match="induction_score_top"):
            strongest_induction_heads(scores, k)


def test_set_heads_picks_from_metric_json_and_keeps_listed_sets(tmp_path):
    """stages.task_summaries.set_heads: a listed set as it is, {induction_score_top: k} the top
    k of metric.json's induction_scores; without a picked set metric.json is not read."""
    from selfrepair.stages.records import write_json
    from selfrepair.stages.task_summaries import set_heads

    metric = tmp_path / "metric.json"
    write_json(metric, {"induction_scores": [[0.1, 0.6], [0.8, 0.3]]})  # as task_clean's
    sets = {"listed": [[0, 0]], "top": {"induction_score_top": 2}}
    assert set_heads(sets, str(metric)) == {"listed": [[0, 0]], "top": [[0, 1], [1, 0]]}
    assert set_heads({"listed": [(0, 1)]}, None) == {"listed": [[0, 1]]}


def test_set_heads_picks_the_largest_mean_clean_direct_effects(tmp_path):
    """{direct_effect_top: k}: the k heads with the largest clean direct effect (task_clean's
    de_head) averaged over the answers, ranked here by hand, a tie by the earlier layer; the
    other picks' and listed sets' files are not read (metric None)."""
    import xarray as xr

    from selfrepair.stages.store import write_zarr
    from selfrepair.stages.task_summaries import set_heads

    # [layer, head, token]; means: [[1.0, 3.0], [3.0, -1.0]] (0,1) and (1,0) tie at 3.0
    de = np.array([[[0.0, 2.0], [2.0, 4.0]], [[5.0, 1.0], [-2.0, 0.0]]], np.float32)
    clean = tmp_path / "clean.zarr"
    write_zarr(xr.Dataset({"de_head": (("layer", "head", "token"), de)}), clean)
    sets = {"listed": [[1, 1]], "de": {"direct_effect_top": 1}, "de2": {"direct_effect_top": 3}}
    assert set_heads(sets, None, str(clean)) == {
        "listed": [[1, 1]],
        "de": [[0, 1]],  # before its tie (1, 0)
        "de2": [[0, 0], [0, 1], [1, 0]],
    }
    with pytest.raises(ValueError, match="direct_effect_top 5 must lie in"):
        set_heads({"de": {"direct_effect_top": 5}}, None, str(clean))
