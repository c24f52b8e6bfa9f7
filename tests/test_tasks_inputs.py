"""A user's own prompts and `path` model, as the workflow reads them: every file the config names
is an input of the rules that read it (editing it plans their rerun), a folder without its
tokenizer stops the dry run, a missing prompts file says so, every bad line is reported at once
with its tokens (before any job, and by `python -m selfrepair.tasks check`)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import yaml
from helpers import ROOT, snakemake
from tasks_helpers import ioi_tokenizer, prompts_task_run

from selfrepair.config import ConfigError
from selfrepair.config.inputs import (
    check_path_tokenizers,
    corpus_files,
    folder_files,
    model_folder_files,
    tokenizer_problem,
)
from selfrepair.tasks import TaskError, build_task
from selfrepair.tasks.jsonl import file_prompts, read_prompt_lines

TARGET = "results/rand/tasks/mine/prompts.zarr"
GOOD = [
    {"prompt": "Then, Mary and John went to the store. John gave a drink to", "answer": " Mary"},
    {"prompt": "Then, John and Mary went to the store. Mary gave a drink to", "answer": " John"},
]


def _write(path, lines) -> None:
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))


@pytest.fixture
def run(tmp_path):
    """A run folder of the reduced demo with a random GPT-2 by path (ckpt/) and a prompts task
    on it (prompts.jsonl, relative to the run folder)."""
    return prompts_task_run(tmp_path, GOOD)


def _smk(run, *args: str) -> subprocess.CompletedProcess:
    configs = ("config/demo.yaml", ".test/config/config.yaml", "mine.yaml")
    return snakemake("--cores", "1", *args, TARGET, "--configfile", *configs, cwd=run, timeout=300)


def _planned(run) -> str:
    proc = _smk(run, "-n")
    assert proc.returncode == 0, proc.stderr[-2000:]
    return proc.stdout


def test_editing_the_prompts_file_or_the_model_folder_plans_the_rerun(run):
    """Through the workflow: task_prompts runs, then a dry run plans nothing; edit the prompts
    file, and it plans task_prompts again; so does editing a file inside the `path` folder (whose
    own mtime does not change)."""
    done = _smk(run)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "Nothing to be done" in _planned(run)
    _write(run / "prompts.jsonl", [GOOD[0], {**GOOD[1], "answer": " Mary"}])
    assert "reason: Updated input files: prompts.jsonl" in _planned(run)
    assert _smk(run, "--touch").returncode == 0
    assert "Nothing to be done" in _planned(run)
    folder_time = os.stat(run / "ckpt").st_mtime_ns
    config = run / "ckpt" / "tokenizer_config.json"
    config.write_text(json.dumps(json.loads(config.read_text()), indent=1))
    assert os.stat(run / "ckpt").st_mtime_ns == folder_time
    assert "reason: Updated input files: ckpt/tokenizer_config.json" in _planned(run)


def test_editing_a_text_corpus_file_plans_the_tokenize_rerun(run):
    """data.corpus.files are inputs of tokenize: a dry run after editing one plans it."""
    (run / "corpus.txt").write_text("Mary and John went to the store.\n")
    config = yaml.safe_load((run / "mine.yaml").read_text())
    config["data"] = {"corpus": {"source": "text_files", "files": ["corpus.txt"]}}
    (run / "mine.yaml").write_text(yaml.safe_dump(config))
    tokens = run / "results" / "rand" / "tokens.zarr"
    tokens.mkdir(parents=True)
    later = os.stat(run / "corpus.txt").st_mtime + 10
    os.utime(tokens, (later, later))

    def planned() -> str:
        configs = ("config/demo.yaml", ".test/config/config.yaml", "mine.yaml")
        proc = snakemake("-n", "--cores", "1", "results/rand/tokens.zarr", "--rerun-triggers", "mtime",
                         "--configfile", *configs, cwd=run, timeout=300)  # fmt: skip
        assert proc.returncode == 0, proc.stdout[-2000:]
        return proc.stdout

    assert "Nothing to be done" in planned()
    (run / "corpus.txt").write_text("John and Mary went to the store.\n")
    os.utime(run / "corpus.txt", (later + 10, later + 10))
    assert "reason: Updated input files: corpus.txt" in planned()


def test_a_path_folder_without_its_tokenizer_stops_the_dry_run(run):
    for name in ("tokenizer.json", "tokenizer_config.json"):
        (run / "ckpt" / name).unlink()
    proc = _smk(run, "-n")
    assert proc.returncode != 0 and "rule " not in proc.stdout
    out = proc.stdout + proc.stderr
    assert "config key models[rand].path: 'ckpt' has no tokenizer files: it needs " in out


def test_a_missing_prompts_file_says_it_does_not_exist(run):
    (run / "prompts.jsonl").unlink()
    proc = _smk(run, "-n")
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0
    assert (
        f"config key tasks.mine.file: prompts.jsonl: the prompts file does not exist (a "
        f"relative path is read from {run})" in out
    )
    assert "UTF-8" not in out


def test_a_prompts_file_beyond_max_prompts_stops_the_dry_run(run):
    """Sized before any job from the file's line count: 20,001 lines against the default
    10,000; n_prompts of a generated task against its own max_prompts."""
    (run / "prompts.jsonl").write_text((json.dumps(GOOD[0]) + "\n") * 20_001)
    proc = _smk(run, "-n")
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0 and "rule " not in proc.stdout
    assert (
        "config key tasks.mine.file: prompts.jsonl has 20,001 prompts, more than "
        "tasks.mine.max_prompts (10,000): every prompt is a row of every task job" in out
    )
    config = yaml.safe_load((run / "mine.yaml").read_text())
    config["tasks"]["ind"] = {"type": "induction", "n_prompts": 50, "max_prompts": 40}
    _write(run / "prompts.jsonl", GOOD)
    (run / "mine.yaml").write_text(yaml.safe_dump(config))
    proc = _smk(run, "-n")
    assert "config key tasks.ind.n_prompts: 50 prompts, more than tasks.ind.max_prompts (40)" in (
        proc.stdout + proc.stderr
    )


BAD = [
    {**GOOD[0], "corrupted": "Then, Mary went"},
    {**GOOD[1], "answer": " Exception"},
    GOOD[0],
    {"prompt": " John" * 70, "answer": " Mary"},
]


def test_every_bad_line_stops_the_run_before_any_job(run):
    """A real run: the workflow's start reports every bad line with its tokens, no job runs."""
    _write(run / "prompts.jsonl", BAD)
    proc = _smk(run)
    assert proc.returncode != 0
    out = proc.stdout + proc.stderr
    assert "Finished jobid" not in out and not (run / TARGET).exists()
    assert "prompts.jsonl: 3 of 4 prompts cannot be used; fix every line below:" in out
    assert "prompts.jsonl:1: the corrupted prompt is 4 tokens ('Then' | ',' | ' Mary'" in out
    assert "prompts.jsonl:2: answer ' Exception' is 7 tokens" in out
    assert "prompts.jsonl:4: the prompt is 70 tokens (with BOS 71), more than the model's " in out
    assert "prompts.jsonl:3" not in out


def test_a_trained_models_prompts_are_checked_before_it_trains(run):
    """A real run on a demo model (no tokenizer before the run): task_prompts needs only the
    trained tokenizer, so it fails, naming every bad line, before train_model runs."""
    lines = [{"prompt": "import", "answer": " Exception"}, {"prompt": "def", "answer": " zqxjv"}]
    _write(run / "prompts.jsonl", lines)
    config = yaml.safe_load((run / "mine.yaml").read_text())
    config["tasks"]["mine"]["models"] = ["tiny-gpt2"]
    (run / "mine.yaml").write_text(yaml.safe_dump(config))
    configs = ("config/demo.yaml", ".test/config/config.yaml", "mine.yaml")
    proc = snakemake("--cores", "1", "results/tiny-gpt2/tasks/mine/clean/shard-000.zarr", "--configfile",
                     *configs, cwd=run, timeout=600)  # fmt: skip
    assert proc.returncode != 0
    log = (run / "results/logs/task_prompts/tiny-gpt2/mine.log").read_text()
    assert "prompts.jsonl: 2 of 2 prompts cannot be used; fix every line below:" in log
    assert "prompts.jsonl:1: answer ' Exception' is " in log
    assert "prompts.jsonl:2: answer ' zqxjv' is " in log
    assert (run / "resources/tokenizers/stdlib-bpe").is_dir()
    assert not (run / "resources/models/tiny-gpt2").exists()


def test_the_check_command_reports_every_bad_line(run):
    def check(file: str, model: str = "rand") -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, "-m", "selfrepair.tasks", "check", file, "--model", model,
             "--configfile", "config/demo.yaml", ".test/config/config.yaml", "mine.yaml"],
            cwd=run, capture_output=True, text=True, timeout=120,
        )  # fmt: skip

    good = check("prompts.jsonl")
    assert good.returncode == 0, good.stderr
    assert "prompts.jsonl: 2 prompts, every line good for rand" in good.stdout
    _write(run / "bad.jsonl", BAD)
    bad = check("bad.jsonl")
    assert bad.returncode == 1
    assert "bad.jsonl: 3 of 4 prompts cannot be used" in bad.stderr
    assert "bad.jsonl:2: answer ' Exception' is 7 tokens" in bad.stderr
    untrained = check("prompts.jsonl", "tiny-gpt2")
    assert untrained.returncode == 1
    assert "tiny-gpt2's tokenizer resources/tokenizers/stdlib-bpe does not exist yet" in (
        untrained.stderr
    )


# --- the pure functions ----------------------------------------------------------------------


def test_folder_files_lists_every_file_but_hidden_ones(tmp_path):
    (tmp_path / "sub").mkdir()
    (tmp_path / ".git").mkdir()
    for name in ("b.json", "a.safetensors", "sub/c.bin", ".git/x", ".hidden"):
        (tmp_path / name).write_text("x")
    expected = [str(tmp_path / n) for n in ("a.safetensors", "b.json", "sub/c.bin")]
    assert folder_files(tmp_path) == expected
    assert folder_files(tmp_path / "absent") == []
    assert model_folder_files({"name": "m", "path": str(tmp_path)}) == expected
    assert model_folder_files({"name": "m", "train": {}}) == []
    assert model_folder_files({"checkpoint": {"model": "m", "subdir": "s"}, "path": "p"}) == []
    assert corpus_files({"source": "text_files", "files": ["a.txt"]}) == ["a.txt"]
    assert corpus_files({"source": "hub", "files": ["a.txt"]}) == []


def test_tokenizer_problem_names_what_is_missing(tmp_path):
    assert "has no tokenizer files: it needs tokenizer.json" in tokenizer_problem(tmp_path)
    (tmp_path / "vocab.json").write_text("{}")
    assert "(it has only vocab.json)" in tokenizer_problem(tmp_path)
    (tmp_path / "merges.txt").write_text("")
    assert tokenizer_problem(tmp_path) is None
    with pytest.raises(ConfigError, match=r"models\[m\].path: .* has no tokenizer files"):
        check_path_tokenizers({"m": {"name": "m", "path": str(ROOT / "workflow")}})


def test_read_prompt_lines_reports_every_bad_line_and_a_missing_file(tmp_path):
    with pytest.raises(TaskError, match="the prompts file does not exist"):
        read_prompt_lines(tmp_path / "absent.jsonl")
    with pytest.raises(TaskError, match="is a folder, not a file"):
        read_prompt_lines(tmp_path)
    path = tmp_path / "p.jsonl"
    path.write_text('{"prompt": "a"}\n{"prompt": "a", "answer": " b"}\nnot json\n')
    with pytest.raises(TaskError) as err:
        read_prompt_lines(path)
    lines = str(err.value).splitlines()
    assert lines[0] == f"{path}: 2 of 3 prompts cannot be used; fix every line below:"
    assert lines[1].startswith(f'  {path}:1: no "answer"')
    assert lines[2].startswith(f"  {path}:3: not a JSON object")


def test_file_prompts_refuses_prompts_beyond_the_context(tmp_path):
    path = tmp_path / "p.jsonl"
    _write(path, GOOD)
    tokenizer = ioi_tokenizer()
    lines = read_prompt_lines(path)
    assert file_prompts(tokenizer, lines, 0, n_ctx=16).tokens.shape == (2, 17)
    with pytest.raises(
        TaskError, match=r"p.jsonl:1: the prompt is 15 tokens .* context of 15 positions"
    ):
        file_prompts(tokenizer, lines, 0, n_ctx=15)
    spec = {"type": "induction", "n_prompts": 4, "length": 12}
    with pytest.raises(
        TaskError,
        match="rows of 25 tokens exceed the model's context of 20 positions; lower length",
    ):
        build_task(spec, tokenizer, 0, 0, n_ctx=20)
    assert build_task(spec, tokenizer, 0, 0, n_ctx=24).tokens.shape == (4, 25)
