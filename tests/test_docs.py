"""The README and the docs state each fact once and keep it true (fast: dry runs only).

- README.md's two commands are the setup-and-demo command and the test command `.ci/run` runs.
- The job counts the README and the docs state are the dry runs' (`snakemake -n`), and the
  demo's sizes they state are config/demo.yaml's.
- Every relative link in README.md, ARCHITECTURE.md, docs/ and config/README.md resolves, to a
  file and, with `#anchor`, to a heading of it.
- Every output the README names (figures of its table, tables, pages) is planned by the demo.
- config/README.md documents every key of the schema, and no key the schema lacks.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml
from helpers import FIGURES, REDUCED_DEMO_CONFIGS, ROOT, SCHEMA, dry_run, load

README = ROOT / "README.md"
DOCS = sorted((ROOT / "docs").glob("*.md"))
PAGES = [README, ROOT / "ARCHITECTURE.md", ROOT / "config" / "README.md", *DOCS]
SETUP = (
    'python3 -m venv .venv && .venv/bin/pip install -e ".[dev]" && '
    ".venv/bin/snakemake --cores all --configfile config/demo.yaml"
)
TESTS = ".venv/bin/pytest"


# --- the dry runs ----------------------------------------------------------------------------


def job_count(output: str) -> int:
    """The total of a dry run's job table."""
    return int(re.search(r"^total\s+(\d+)$", output, flags=re.MULTILINE).group(1))


def planned_files(output: str) -> set[str]:
    """Every output file a dry run plans."""
    lines = [line for line in output.splitlines() if line.strip().startswith("output:")]
    return {f.strip() for line in lines for f in line.split(":", 1)[1].split(",")}


def stated_jobs(text: str) -> int:
    """The first job count a page states ("174 jobs")."""
    return int(re.search(r"(\d[\d,]*) jobs", text).group(1).replace(",", ""))


# --- the commands ----------------------------------------------------------------------------


def code_blocks(text: str) -> list[str]:
    return [b.strip() for b in re.findall(r"```(?:bash)?\n(.*?)```", text, flags=re.DOTALL)]


def test_readme_opens_with_the_two_commands_and_ci_runs_the_second():
    blocks = code_blocks(README.read_text())
    assert blocks[:2] == [SETUP, TESTS]
    ci = (ROOT / ".ci" / "run").read_text()
    assert re.search(rf"^{re.escape(TESTS)}$", ci, flags=re.MULTILINE), (
        ".ci/run lacks the test command"
    )


def test_readme_is_short():
    assert len(README.read_text().splitlines()) <= 200


# --- the numbers -----------------------------------------------------------------------------


def test_the_demo_job_counts_stated_are_the_dry_runs():
    """README.md and docs/demo.md state the demo's jobs; docs/tests.md the reduced demo's."""
    demo = job_count(dry_run("config/demo.yaml"))
    # every job count of the README is the demo's
    assert {int(n) for n in re.findall(r"(\d+) jobs", README.read_text())} == {demo}
    assert stated_jobs((ROOT / "docs" / "demo.md").read_text()) == demo
    reduced = job_count(dry_run(*REDUCED_DEMO_CONFIGS))
    tests_page = (ROOT / "docs" / "tests.md").read_text()
    section = tests_page[tests_page.index("**The workflow**") :]
    assert stated_jobs(section) == reduced


def test_the_checkpoint_jobs_stated_are_the_dry_runs():
    """docs/demo.md and docs/training.md: the training checkpoints' jobs and their figure."""
    output = dry_run("config/demo.yaml")
    jobs = re.split(r"\n(?=\[[^\]]*\]\n(?:local)?rule )", output)
    checkpoint = [j for j in jobs if "@step" in j.split("output:", 1)[-1].split("\n")[0]]
    count = len(checkpoint) + output.count("rule training_self_repair:")
    for page in ("demo.md", "training.md"):
        text = (ROOT / "docs" / page).read_text()
        assert re.search(rf"\b{count} (?:of the demo's jobs|measure the training)", text), page


def rule_jobs(output: str) -> dict[str, int]:
    """A dry run's job table: rule -> jobs."""
    rows = re.findall(r"^(\w+)\s+(\d+)$", output, flags=re.MULTILINE)
    return {rule: int(n) for rule, n in rows if rule != "total"}


def test_the_store_tokens_switch_jobs_stated_are_the_dry_runs():
    """docs/storage.md: the jobs that switching engine.store_tokens reruns today (every job of
    the rules that take it) are the reduced demo's and the demo's dry runs'. It quoted 24 ablate
    jobs, a count of the layout with one ablate job per variant, after the layout had changed."""
    text = (ROOT / "docs" / "storage.md").read_text()
    stated = re.search(r"Today one.*?plans (.*?) jobs, (\d+) in all", text, flags=re.DOTALL)
    pairs = re.findall(r"(\d+) (\w+)", " ".join(stated.group(1).split()))
    counts = {rule: int(n) for n, rule in pairs}
    rules = {"clean_cache", "ablate", "checkpoint_ablate", "neuron_effects"}
    assert set(counts) == rules, counts
    for configs in (REDUCED_DEMO_CONFIGS, ("config/demo.yaml",)):
        jobs = rule_jobs(dry_run(*configs))
        # the switch reruns running text's clean passes: a task's one clean_cache job (one per
        # task_metric job) takes no store_tokens
        jobs["clean_cache"] -= jobs.get("task_metric", 0)
        assert {rule: jobs[rule] for rule in rules} == counts, configs


def test_the_demo_sizes_stated_are_the_config():
    demo = load("demo.yaml")
    (tokenizer,) = demo["tokenizers"].values()
    trains = [m["train"] for m in demo["models"] if not m.get("tasks_only")]
    text = (ROOT / "docs" / "demo.md").read_text()
    text = " ".join(text.split())
    # the induction task's own model (tasks_only), in the same paragraph
    (induction,) = [m for m in demo["models"] if m.get("tasks_only")]
    t = induction["train"]
    assert (
        f"`{induction['name']}` ({t['n_layers']} layers, d_model {t['d_model']}, tied "
        f"embeddings, {t['steps']} steps of induction rows of {t['n_ctx']} tokens" in text
    )
    assert f"BPE tokenizer ({tokenizer['vocab_size']} tokens)" in text
    for key, phrase in (
        ("n_layers", "{}-layer"),
        ("n_heads", "{}-head"),
        ("d_model", "d_model {}"),
        ("steps", "{} steps"),
        ("batch_size", "of {} rows"),
    ):
        (value,) = {t[key] for t in trains}
        assert phrase.format(value) in text, (key, value)
    assert f"of {demo['data']['seq_len']} tokens" in text
    assert f"{demo['data']['n_tokens']:,} tokens" in text
    (steps,) = {tuple(t["keep_steps"]) for t in trains}
    assert "steps " + ", ".join(map(str, steps[:-1])) + f" and {steps[-1]}" in text


# --- links -----------------------------------------------------------------------------------


def slug(heading: str) -> str:
    """GitHub's anchor of a heading."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


def anchors(page: Path) -> set[str]:
    text = re.sub(r"```.*?```", "", page.read_text(), flags=re.DOTALL)
    return {slug(h) for h in re.findall(r"^#+ (.*)$", text, flags=re.MULTILINE)}


def relative_links(page: Path) -> list[str]:
    text = re.sub(r"```.*?```", "", page.read_text(), flags=re.DOTALL)
    links = re.findall(r"\]\(([^)\s]+)\)", text)
    return [link for link in links if not re.match(r"[a-z]+:", link)]


def broken_links(page: Path) -> list[str]:
    broken = []
    for link in relative_links(page):
        path, _, anchor = link.partition("#")
        target = (page.parent / path).resolve() if path else page
        if not target.exists() or (anchor and anchor not in anchors(target)):
            broken.append(link)
    return broken


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_relative_link_resolves(page):
    assert relative_links(page) or page.name != "README.md"
    assert broken_links(page) == []


def test_a_broken_link_is_caught(tmp_path):
    (tmp_path / "there.md").write_text("# A heading\n")
    page = tmp_path / "page.md"
    page.write_text(
        "[ok](there.md) [ok](there.md#a-heading) [web](https://example.org/x) "
        "[gone](missing.md) [bad](there.md#no-such)\n```\n[in code](nowhere.md)\n```\n"
    )
    assert broken_links(page) == ["missing.md", "there.md#no-such"]


def test_every_benchmark_output_cited_exists():
    """The pages cite benchmark outputs by path (benchmarks/results/); each is committed."""
    cited = {
        path
        for page in PAGES
        for path in re.findall(r"benchmarks/results/[\w.-]+", page.read_text())
    }
    assert len(cited) >= 4
    assert sorted(p for p in cited if not (ROOT / p).is_file()) == []


def test_every_doc_page_is_linked_from_the_readme():
    linked = {(ROOT / link.partition("#")[0]).resolve() for link in relative_links(README)}
    assert set(DOCS) <= linked


# --- outputs ---------------------------------------------------------------------------------


def readme_figures(text: str) -> list[str]:
    """The figure files of the README's figure table (first column, under ## Outputs)."""
    section = text[text.index("## Outputs") :]
    section = section[: section.index("\n## ", 1)]
    table = section[section.index("| figure |") :]
    table = table[: table.index("\n\n")]
    rows = [line for line in table.splitlines() if line.startswith("| `")]
    return re.findall(r"`([\w-]+)`", "".join(row.split(" | ")[0] for row in rows))


def readme_outputs(text: str) -> set[str]:
    """Every path under results/ the README names, placeholders filled with the demo's models
    and task (a task's path with the models it measures: its `models`, or every one)."""
    demo = load("demo.yaml")
    every = [m["name"] for m in demo["models"]]
    paths = set()
    for path in re.findall(r"`(results/[^`\s]+)`", text):
        for task in demo["tasks"] if "<task>" in path else [None]:
            models = demo["tasks"][task].get("models", every) if task else every
            for model in models if "<model>" in path else [None]:
                paths.add(path.replace("<model>", str(model)).replace("<task>", str(task)))
    return paths


def test_the_readme_figure_table_lists_every_figure_once():
    listed = readme_figures(README.read_text())
    assert sorted(listed) == sorted(FIGURES)


def test_every_output_the_readme_names_is_planned_by_the_demo():
    planned = planned_files(dry_run("config/demo.yaml"))
    text = README.read_text()
    figures = {
        f"results/figures/{stem}.{ext}" for stem in readme_figures(text) for ext in ("png", "pdf")
    }
    assert figures <= planned, figures - planned
    named = readme_outputs(text)
    assert len(named) >= 8
    for path in sorted(named):
        if "<" in path:  # e.g. results/figures/<file>.pdf: the figure table's files, above
            continue
        assert path in planned or any(p.startswith(path.rstrip("/") + "/") for p in planned), path


# --- config keys -----------------------------------------------------------------------------


def schema_keys(node: dict, defs: dict, prefix: str = "") -> dict[str, bool]:
    """{key path: whether it is a leaf} of every key the schema allows: `a.b`, `models[].x` for
    the items of a list, `<name>` for any key of a mapping (additionalProperties)."""
    keys: dict[str, bool] = {}
    subs = [defs[node["$ref"].split("/")[-1]]] if "$ref" in node else []
    subs += [*node.get("allOf", []), *node.get("oneOf", []), *node.get("anyOf", [])]
    for sub in subs:
        for key, leaf in schema_keys(sub, defs, prefix).items():
            keys[key] = keys.get(key, True) and leaf
    for name, sub in node.get("properties", {}).items():
        path = f"{prefix}.{name}" if prefix else name
        below = schema_keys(sub, defs, path)
        keys[path] = keys.get(path, True) and not below
        for key, leaf in below.items():
            keys[key] = keys.get(key, True) and leaf
    if isinstance(node.get("additionalProperties"), dict):
        keys.update(schema_keys(node["additionalProperties"], defs, f"{prefix}.<name>"))
    if isinstance(node.get("items"), dict):
        keys.update(schema_keys(node["items"], defs, f"{prefix}[]"))
    return keys


def documented_keys(text: str) -> list[str]:
    """The key paths in the first column of config/README.md's key tables (tables whose first
    header is `key`): `a.b.c` / `.d` / `.e.f` names a.b.c, a.b.d and a.b.e.f."""
    keys, in_keys = [], False
    for line in text.splitlines():
        if not line.startswith("|"):
            in_keys = False
            continue
        cell = line.split("|")[1].strip()
        if cell == "key":
            in_keys = True
        names = re.findall(r"`([^`]+)`", cell) if in_keys else []
        if names:
            parent = names[0].rsplit(".", 1)[0] if "." in names[0] else ""
            keys += [names[0], *(parent + name for name in names[1:] if name.startswith("."))]
    return keys


def matches(pattern: str, key: str) -> bool:
    """Whether a documented key names a schema key: part by part, `<...>` standing for any one
    part (`<fig>` for `fig07` or `fig08[]`, `<name>` for the schema's any-key)."""
    parts, key_parts = pattern.split("."), key.split(".")
    return len(parts) == len(key_parts) and all(
        p == k or (p.startswith("<") and p.endswith(">"))
        for p, k in zip(parts, key_parts, strict=True)
    )


def undocumented(schema: dict, documented: list[str]) -> list[str]:
    keys = schema_keys(schema, schema.get("$defs", {}))
    return sorted(
        k for k, leaf in keys.items() if leaf and not any(matches(d, k) for d in documented)
    )


def unknown(schema: dict, documented: list[str]) -> list[str]:
    keys = schema_keys(schema, schema.get("$defs", {}))
    return sorted(d for d in documented if not any(matches(d, k) for k in keys))


def config_readme_keys() -> list[str]:
    return documented_keys((ROOT / "config" / "README.md").read_text())


def test_config_readme_documents_every_key_of_the_schema():
    schema = yaml.safe_load(Path(SCHEMA).read_text())
    assert len(config_readme_keys()) > 100
    assert undocumented(schema, config_readme_keys()) == []


def test_config_readme_documents_no_key_the_schema_lacks():
    schema = yaml.safe_load(Path(SCHEMA).read_text())
    assert unknown(schema, config_readme_keys()) == []


def test_a_key_missing_from_either_side_is_caught():
    schema = {
        "$defs": {"t": {"properties": {"model": {}, "sub": {"properties": {"n": {}}}}}},
        "properties": {
            "engine": {"properties": {"batch_size": {}, "new_key": {}}},
            "fig": {"$ref": "#/$defs/t", "properties": {"model": {"default": "x"}}},
            "tasks": {"additionalProperties": {"properties": {"type": {}}}},
            "models": {"items": {"oneOf": [{"type": "string"}, {"properties": {"name": {}}}]}},
        },
    }
    text = (
        "| key | default | meaning |\n|---|---|---|\n"
        "| `engine.batch_size` / `.old_key` | | |\n| `fig.model` / `.sub.n` | | |\n"
        "| `tasks.<name>.type` | | |\n| `models[].name` | | |\n"
    )
    documented = documented_keys(text)
    assert documented == [
        "engine.batch_size", "engine.old_key", "fig.model", "fig.sub.n", "tasks.<name>.type",
        "models[].name",
    ]  # fmt: skip
    assert undocumented(schema, documented) == ["engine.new_key"]
    assert unknown(schema, documented) == ["engine.old_key"]
