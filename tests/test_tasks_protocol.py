"""CoAx's protocol as config: IOI's prompt options (tasks.<name>.templates, names, prepend_bos),
today's prompts unchanged by default, prompt seeds as one task per seed (config.prompt_seeds)
whose method tables are summarised as mean +- std over seeds (analysis.method_seeds, checked by
hand), and config/ioi-coax.yaml planned through snakemake -n."""

from __future__ import annotations

import hashlib
import json
import re
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
import yaml
from helpers import ROOT, load
from tasks_helpers import ioi_tokenizer

from selfrepair.analysis.method_seeds import seed_summary
from selfrepair.config import ConfigError
from selfrepair.config.prompt_seeds import check_task_protocol, expand_prompt_seeds, seeded_tasks
from selfrepair.plots.captions import task_description
from selfrepair.tasks import TaskError, build_task
from selfrepair.tasks.ioi import COAX_NAMES, COAX_OBJECTS, COAX_PLACES, ioi_prompts

BOS = 0
# sha256 of ioi_prompts(ioi_tokenizer(), 40, seed, 0) made by main at 2dc7cb0, before the
# options existed (_digest's fields): the default prompts, byte for byte.
DEFAULT_DIGESTS = {
    0: "79272da644c2fe204d40357edd17fc8154ba8cd56cab734666645fc5dd8f33c8",
    3: "1149032110355b8a7f9b5931fcdc32cd3aeba91083d0a93a9622c273d5e69a2d",
}


def _digest(p) -> str:
    h = hashlib.sha256()
    for a in (p.tokens, p.corrupted, p.scored, p.counter, p.baseline, p.length):
        h.update(np.ascontiguousarray(a).tobytes())
    info = {k: v.tolist() for k, v in p.info.items()}
    h.update(json.dumps([p.text, info, p.attrs], sort_keys=True).encode())
    return h.hexdigest()


@pytest.mark.parametrize("seed", sorted(DEFAULT_DIGESTS))
def test_default_ioi_prompts_are_todays_byte_for_byte(seed):
    tok = ioi_tokenizer()
    assert _digest(ioi_prompts(tok, 40, seed, BOS)) == DEFAULT_DIGESTS[seed]
    spec = {"type": "ioi", "n_prompts": 40}
    defaults = spec | {"templates": "wang", "names": "wang", "prepend_bos": True}
    for entry in (spec, defaults):
        prompts = build_task(entry, tok, seed, BOS)
        prompts.attrs = {k: v for k, v in prompts.attrs.items() if k != "task_type"}
        for k in ("seed", "bos_id", "pad_id"):
            prompts.attrs.pop(k)
        assert _digest(prompts) == DEFAULT_DIGESTS[seed]


def test_coax_prompts_are_coax_draws_without_bos():
    """templates and names coax: per prompt the indirect object and subject, then a place and
    an object, drawn in that order from numpy's default_rng(seed) over CoAx's lists (its
    ioi_prompts), the text 'When IO and S went to the PLACE, S gave a OBJECT to'; no BOS:
    the row is the text's tokens and the answer."""
    tok = ioi_tokenizer(coax=True)
    seed, n = 15, 12
    p = ioi_prompts(tok, n, seed, BOS, templates="coax", names="coax", prepend_bos=False)
    rng = np.random.default_rng(seed)
    for i in range(n):
        io, s = rng.choice(list(COAX_NAMES), 2, replace=False)
        place, obj = rng.choice(list(COAX_PLACES)), rng.choice(list(COAX_OBJECTS))
        text = f"When {io} and {s} went to the {place}, {s} gave a {obj} to"
        assert p.text[i] == text
        length = int(p.length[i])
        ids = tok(text, add_special_tokens=False)["input_ids"]
        assert p.tokens[i, : length - 1].tolist() == ids  # no BOS before the text
        assert tok.decode([int(p.tokens[i, length - 1])]) == f" {io}"  # the answer
        assert tok.decode([int(p.counter[i, length - 2])]) == f" {s}"
        assert np.flatnonzero(p.scored[i]).tolist() == [length - 2]  # the last position
        differ = np.flatnonzero(p.tokens[i, : length - 1] != p.corrupted[i, : length - 1])
        assert len(differ) == 3  # ABC: the three name positions
        assert p.info["io_position"][i] == 1 and p.info["abba"][i] == 1
    assert p.attrs["prepend_bos"] == 0 and p.attrs["templates"] == "coax"
    first = ioi_prompts(tok, 2, 1, BOS, templates="coax", names="coax")
    assert first.text[0] == "When Anna and Paul went to the library, Paul gave a drink to"
    assert first.tokens[0, 0] == BOS  # prepend_bos default: BOS first


def test_coax_names_are_refused_when_not_single_tokens_and_seeds_reach_build_task():
    with pytest.raises(TaskError, match=r"CoAx's words .*Sid.* are not single tokens"):
        ioi_prompts(ioi_tokenizer(), 4, 0, BOS, names="coax")
    tok = ioi_tokenizer(coax=True)
    spec = {"type": "ioi", "n_prompts": 4, "templates": "coax", "names": "coax"}
    seeded = build_task(spec | {"prompt_seed": 8}, tok, 0, BOS)
    assert seeded.text == ioi_prompts(tok, 4, 8, BOS, "coax", "coax").text
    assert seeded.attrs["seed"] == 8
    assert "prompt seed 8, no BOS" in task_description(
        spec | {"prompt_seed": 8, "prepend_bos": False}
    )


def _tasks(**ioi):
    spec = {"type": "ioi", "n_prompts": 8, "ablations": ["zero"], "ablation_sets": {}}
    return {"ioi": spec | ioi, "ind": {"type": "induction", "ablations": ["mean"]}}


def test_prompt_seeds_expand_into_one_task_per_seed_in_order():
    tasks = expand_prompt_seeds(_tasks(prompt_seeds=[1, 15, 22, 8]))
    assert list(tasks) == ["ioi@seed1", "ioi@seed15", "ioi@seed22", "ioi@seed8", "ind"]
    assert tasks["ioi@seed22"]["prompt_seed"] == 22 and "prompt_seeds" not in tasks["ioi@seed22"]
    assert tasks["ind"] == _tasks()["ind"]
    assert seeded_tasks(tasks) == {"ioi": ["ioi@seed1", "ioi@seed15", "ioi@seed22", "ioi@seed8"]}
    assert expand_prompt_seeds(_tasks()) == _tasks()  # no prompt_seeds: unchanged


@pytest.mark.parametrize(
    ("tasks", "include_bos", "message"),
    [
        (_tasks(prepend_bos=False, ablations=["mean"]), False, r"tasks.ioi.prepend_bos: false"),
        ({"ind": {"type": "induction", "ablations": ["zero"], "names": "coax"}}, True,
         r"tasks.ind.names: only an ioi task"),
        ({"f": {"type": "prompts", "ablations": ["zero"], "prompt_seeds": [1]}}, True,
         r"tasks.f.prompt_seeds: a prompts task reads its file"),
    ],
)  # fmt: skip
def test_prompt_options_that_cannot_hold_are_refused_in_one_line(tasks, include_bos, message):
    with pytest.raises(ConfigError, match=message):
        check_task_protocol(tasks, include_bos)
    check_task_protocol(_tasks(prepend_bos=False, ablations=["mean"]), True)  # BOS averaged


def _table(roc, ap, p8, low, n_prompts=96):
    methods = ["compensation_energy", "mine"]
    return pd.DataFrame(
        {"roc_auc": roc, "average_precision": ap, "precision_at_k": p8, "k": [8, 8],
         "n_prompts": [n_prompts] * 2, "roc_auc_low": low, "roc_auc_high": [1.0, 1.0],
         "coax_roc_auc": [0.941, np.nan]},
        index=pd.Index(methods, name="method"),
    )  # fmt: skip


def test_seed_summary_is_the_mean_and_population_std_over_seeds():
    tables = {
        1: _table([0.9, 0.5], [0.5, 0.1], [0.5, 0.0], [0.8, 0.3]),
        15: _table([0.8, 0.7], [0.3, 0.2], [0.25, 0.125], [0.7, 0.4]),
        22: _table([0.7, 0.6], [0.4, 0.3], [0.375, 0.0], [0.6, 0.5]),
    }
    out = seed_summary(tables)
    row = out.loc["compensation_energy"]
    # by hand: mean (0.9 + 0.8 + 0.7) / 3 = 0.8; std sqrt((0.01 + 0 + 0.01) / 3)
    assert row["roc_auc_mean"] == pytest.approx(0.8)
    assert row["roc_auc_std"] == pytest.approx((0.02 / 3) ** 0.5)
    assert row["average_precision_mean"] == pytest.approx(0.4)
    assert row["precision_at_k_mean"] == pytest.approx(0.375)
    assert row["precision_at_k_std"] == pytest.approx((2 * 0.125**2 / 3) ** 0.5)
    assert row["coax_roc_auc"] == 0.941 and row["coax_roc_auc_std"] == 0.0041
    assert row["roc_auc_low_seed15"] == 0.7 and row["roc_auc_seed22"] == 0.7
    assert out.loc["mine", "roc_auc_mean"] == pytest.approx(0.6)
    assert np.isnan(out.loc["mine", "coax_roc_auc"]) and out.loc["mine", "n_seeds"] == 3
    with pytest.raises(ValueError, match="seed 2's method table has other methods"):
        seed_summary({1: tables[1], 2: tables[1].drop("mine")})
    assert out.loc["mine", "n_prompts_seed15"] == 96
    with pytest.raises(ValueError, match="seed 2's method table has no n_prompts column: rerun"):
        seed_summary({1: tables[1], 2: tables[1].drop(columns="n_prompts")})


def test_the_seeds_page_shows_a_small_std_and_each_seeds_prompt_count(tmp_path):
    """Rule method_seeds' stage on two seeds' tables whose ROC-AUCs differ by 0.00094: the HTML
    page showed the std, 0.00047, as 0.000 (three decimals) and no prompt count; now two
    significant figures and each seed's count, read from its table; the CSV keeps full
    precision."""
    from selfrepair.stages.methods import method_seeds

    paths = []
    for seed, roc, n in ((1, [0.9, 0.5], 96), (15, [0.90094, 0.5], 95)):
        paths.append(tmp_path / f"seed{seed}.csv")
        _table(roc, [0.5, 0.1], [0.5, 0.0], [0.8, 0.3], n_prompts=n).to_csv(paths[-1])
    out = tmp_path / "seeds.html"
    method_seeds(tables=paths, seeds=[1, 15], csv=tmp_path / "s.csv", html_path=out, title="t")
    page = out.read_text()
    assert "Measured on 96 prompts (seed 1), 95 prompts (seed 15)." in page
    row = re.search(r"<th>compensation_energy</th>(.*?)</tr>", page, re.S).group(1)
    cells = re.findall(r"<td>([^<]*)</td>", row)
    assert cells[:2] == ["0.900", "0.00047"], cells
    csv = pd.read_csv(tmp_path / "s.csv", index_col="method")
    assert csv.loc["compensation_energy", "roc_auc_std"] == pytest.approx(0.00047, abs=1e-9)
    assert list(csv.n_prompts_seed15) == [95, 95]


def _dry_run(*configs, target=()) -> dict[str, int]:
    proc = subprocess.run(
        [sys.executable, "-m", "snakemake", *target, "-n", "--forceall", "--cores", "1",
         "--configfile", *configs],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:] + proc.stdout[-2000:]
    return {
        line.split()[0]: int(line.split()[1])
        for line in proc.stdout.splitlines()
        if len(line.split()) == 2 and line.split()[1].isdigit()
    }


def test_the_coax_config_plans_one_task_per_seed_and_their_summary():
    """config/ioi-coax.yaml alone plans through snakemake -n (the `tasks` target): each of the
    four seeds' prompts and method table once, one method_seeds over them; its task is CoAx's
    protocol."""
    jobs = _dry_run("config/ioi-coax.yaml", target=["tasks"])
    per_seed = {"task_prompts", "task_methods", "method_table", "task_metric", "task_set_ablate"}
    assert {job: jobs[job] for job in per_seed} == dict.fromkeys(per_seed, 4)
    assert jobs["method_seeds"] == 1 and "ablate" not in jobs  # the tasks only
    assert jobs["clean_cache"] == 4  # the clean pass of each seed's prompts
    spec = load("ioi-coax.yaml")["tasks"]["ioi"]
    assert spec["prompt_seeds"] == [1, 15, 22, 8] and spec["n_prompts"] == 96
    assert (spec["templates"], spec["names"], spec["prepend_bos"]) == ("coax", "coax", False)
    assert spec["metric"] == "logit_diff" and len(spec["expected_backups"]) == 8


def test_prompt_seeds_on_the_ioi_ci_config_plan_a_task_per_seed(tmp_path):
    """Two prompt seeds on the IOI CI overlay: the per-seed stores are separate jobs (their own
    paths) and the summary reads both method tables."""
    overlay = tmp_path / "seeds.yaml"
    overlay.write_text(yaml.safe_dump({"tasks": {"ioi": {"prompt_seeds": [4, 9]}}}))
    jobs = _dry_run("config/ioi.yaml", ".test/config/ioi.yaml", str(overlay), target=["tasks"])
    assert jobs["task_prompts"] == 2 and jobs["method_table"] == 2 and jobs["method_seeds"] == 1


def test_the_ioi_caption_is_todays_by_default_and_names_the_options():
    spec = {"type": "ioi", "n_prompts": 16}
    today = (
        "Task: IOI (Wang et al. 2022), 16 prompts of its 15 templates, ABBA and BABA "
        "alternating, names, places and objects that are single tokens in the model's "
        "tokenizer; answer the indirect object, counterfactual the subject, corrupted "
        "prompts ABC (three other names)"
    )
    assert task_description(spec) == today
    options = spec | {"names": "coax", "prepend_bos": False, "prompt_seed": 4}
    assert task_description(options) == today + " (names coax, no BOS, prompt seed 4)"
