"""The package layout keeps its promises (ARCHITECTURE.md): one function per rule in
selfrepair.stages, named after the rule; small modules and functions; `__all__` everywhere."""

import ast
import importlib
import re
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import REDUCED_DEMO_CONFIGS, ROOT, base_rule, own_script, rule_script, rule_texts

PACKAGE = ROOT / "selfrepair"
MODULES = sorted(PACKAGE.rglob("*.py"))
MAX_MODULE_LINES = 400
MAX_FUNCTION_LINES = 80


def _tree(path):
    return ast.parse(path.read_text(), filename=str(path))


def _dotted(path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


@pytest.mark.parametrize("path", MODULES, ids=lambda p: str(p.relative_to(PACKAGE)))
def test_module_is_small_and_says_what_it_exports(path):
    lines = len(path.read_text().splitlines())
    assert lines <= MAX_MODULE_LINES, f"{path.name}: {lines} lines; split it by concern"
    tree = _tree(path)
    names = {t.id for node in tree.body if isinstance(node, ast.Assign) for t in node.targets}
    if path.name != "__init__.py" or path.parent == PACKAGE:
        assert "__all__" in names or "__all__" in path.read_text(), f"{path} has no __all__"
    for node in ast.walk(tree):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            length = node.end_lineno - node.lineno + 1
            doc = ast.get_docstring(node) or ""
            assert length <= MAX_FUNCTION_LINES or "long because" in doc, (
                f"{path.name}:{node.lineno} {node.name} is {length} lines; split it or say in "
                "its docstring why it is long"
            )


def _rules() -> list[str]:
    proc = subprocess.run(
        [sys.executable, "-m", "snakemake", "--list-rules", "--configfile", "config/demo.yaml"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    return [r.strip() for r in proc.stdout.split() if re.fullmatch(r"\w+", r.strip())]


def test_every_rule_has_one_stage_function_named_after_it():
    """A rule's code is found by its name: selfrepair.stages.<stage>.<rule>, and its script
    calls that function; a `use rule X as Y with:` variant without a function of its own runs
    X's (rules/atp.smk's task_* rules: the same rules on a task)."""
    # `all` and the named targets (Snakefile) only name outputs: they run nothing.
    rules = [r for r in _rules() if r not in {"all", "tasks", "figures", "tables", "explorer"}]
    assert len(rules) >= 25
    stages = {
        p.stem: importlib.import_module(f"selfrepair.stages.{p.stem}")
        for p in (PACKAGE / "stages").glob("*.py")
        if p.stem != "__init__"
    }
    for rule in rules:
        # A `use rule X as Y with:` variant without a script of its own runs X's stage function
        # (one stage, two rules: task_set_ablate and set_ablate); one with its own script, its own.
        func = rule if own_script(rule) else base_rule(rule)
        homes = [name for name, module in stages.items() if func in getattr(module, "__all__", ())]
        assert len(homes) == 1, f"rule {rule}: stage function in {homes or 'no stages module'}"
        assert callable(getattr(stages[homes[0]], func))
        script = (ROOT / "workflow" / "scripts" / rule_script(rule)).read_text()
        assert re.search(rf"\b{func}\b", script), f"rule {rule}'s script does not call {func}"


# Running text and tasks are one path: a task's rule (or the text variant of a task-first rule)
# is `use rule <base> as <variant> with:`, runs the base's stage function and script, never a
# copy of them, and no stage function exists for one kind of dataset alone (issue 35; the
# distribution is data: stages.tasks.measured).
ONE_PATH = {
    "task_ablate": "ablate",
    "set_ablate": "task_set_ablate",
    "task_summary": "summarize_heads",
    "task_head_table": "head_table",
    "task_self_repair_per_head": "fig01",
    "task_de_vs_metric_drop": "fig02",
    "task_repairer_heatmap": "repair_heatmap",
    "task_repair_bars": "repair_bars",
    "task_explorer": "head_explorer",
    "task_atp": "atp",
    "task_atp_per_kind": "atp",
    "task_atp_summary": "atp_summary",
    "task_atp_scatter": "atp_scatter",
    "task_atp_error": "atp_error",
    "task_atp_table": "atp_table",
}
MODULES_OF_STAGES = [p for p in (PACKAGE / "stages").glob("*.py") if p.stem != "__init__"]
# The rules that serve every dataset through the {dataset} wildcard ("" running text,
# tasks/<task>/ a task; issue 35), each with the task twin it replaced, which must not come back.
DATASET_RULES = {"clean_cache": "task_clean"}


@pytest.mark.parametrize(("rule", "twin"), DATASET_RULES.items())
def test_a_rule_serving_every_dataset_has_no_task_twin(rule, twin):
    texts = rule_texts()
    assert re.search(r"output:\n(\s+\w+=.*\n)*\s+\w+=.*\{dataset\}", texts[rule]), (
        f"rule {rule}'s outputs are not per dataset ({{dataset}})"
    )
    twins = [name for name, text in texts.items() if name == twin or f"use rule {rule} as" in text]
    assert not twins, f"rule {rule} serves every dataset: no task twin ({twins})"


@pytest.mark.parametrize(("variant", "base"), ONE_PATH.items())
def test_running_text_and_tasks_share_one_rule_and_stage(variant, base):
    assert base_rule(variant) == base, f"rule {variant} is not `use rule {base} as {variant}`"
    assert not own_script(variant), f"rule {variant} names a script of its own"
    stages = [importlib.import_module(f"selfrepair.stages.{p.stem}") for p in MODULES_OF_STAGES]
    assert not [m.__name__ for m in stages if hasattr(m, variant)], f"a stage function {variant}"
    assert not (ROOT / "workflow" / "scripts" / f"{variant}.py").exists()


# What is left of the two paths (issue 35): the stage functions named for tasks alone, each with
# why. A new one fails here (make the difference data, as stages.explorer.Rows and
# stages.tasks.Measured do, or say here why it serves one kind of dataset); the explorer has none.
ONE_DATASET_WORDS = {"task", "tasks", "answers"}
ONE_DATASET_LEFT = {
    "stages.tasks.task_prompts": "rule task_prompts: a task's prompts (running text's: tokenize)",
    "stages.tasks.task_inputs": "a task's counterfactuals and corrupted prompts (text has none)",
    "stages.tasks.task_set_ablate": "serves both: set_ablate is its running-text variant",
    "stages.clean._task_metric": "the clean metric over a task's answers (its captions' number)",
    "stages.task_summaries.task_metric": "rule task_metric: that metric as JSON (running text has none)",
    "stages.summaries.task_title": "serves both: None on running text",
    "stages.task_summaries.task_backups": "backups against the expected ones a task names",
    "stages.methods.task_methods": "methods ranked against the expected backups a task names",
    "stages.atp.exact_on_answers": "not yet one: twin of exact_on_units (issue 35)",
    "stages.summaries._answers_summary": "not yet one: twin of summarize_heads' shard reduction",
    "stages.summaries._task_repairs": "task_summary writes a task's repairs (text: repair_summary)",
}
EXPLORER_MODULES = ("stages/explorer.py", "analysis/explorer.py")


def one_dataset_functions(paths) -> set[str]:
    """module.function of each top-level function or class of paths whose name has a word of
    ONE_DATASET_WORDS (words: its parts between underscores)."""
    return {
        f"{_dotted(path).removeprefix('selfrepair.')}.{node.name}"
        for path in paths
        for node in _tree(path).body
        if isinstance(node, ast.FunctionDef | ast.ClassDef)
        and ONE_DATASET_WORDS & set(node.name.strip("_").split("_"))
    }


def test_no_stage_or_explorer_function_serves_one_kind_of_dataset_alone():
    found = one_dataset_functions(MODULES_OF_STAGES + [PACKAGE / p for p in EXPLORER_MODULES])
    explorer = [n for n in found if n.rsplit(".", 2)[-2] == "explorer"]
    assert not explorer, f"the explorer has a path for one kind of dataset: {explorer}"
    assert found <= set(ONE_DATASET_LEFT), (
        f"{sorted(found - set(ONE_DATASET_LEFT))} serve one kind of dataset: make the "
        "difference data or list them in ONE_DATASET_LEFT with why"
    )
    assert set(ONE_DATASET_LEFT) <= found, f"gone: {sorted(set(ONE_DATASET_LEFT) - found)}"


# --- a figure's or table's file name, grepped from the repository root, finds its rule -----------


def hidden_outputs(outputs: list[str], texts: dict[str, str]) -> list[str]:
    """The files among `outputs` whose name is not written in exactly one rule's text (rule
    name -> text): a rule that builds a path in a function hides it from grep."""
    return sorted(
        out for out in outputs if sum(Path(out).name in text for text in texts.values()) != 1
    )


def planned_outputs(configs: tuple[str, ...], folders: tuple[str, ...]) -> list[str]:
    """The files a dry run of the workflow with these config files plans under the given
    folders of results/."""
    proc = subprocess.run(
        [sys.executable, "-m", "snakemake", "-n", "--forceall", "--configfile", *configs],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    lines = [line for line in proc.stdout.splitlines() if line.strip().startswith("output:")]
    files = [f.strip() for line in lines for f in line.split(":", 1)[1].split(",")]
    return sorted({f for f in files if f.startswith(tuple(f"results/{d}/" for d in folders))})


def test_every_figure_and_table_file_is_written_in_its_rule():
    outputs = planned_outputs(REDUCED_DEMO_CONFIGS, ("figures", "tables"))
    assert len(outputs) >= 2 * 19 + 4  # every figure's PDF and PNG, both tables' CSV and HTML
    assert hidden_outputs(outputs, rule_texts()) == []


def test_a_rule_that_builds_its_path_in_a_function_is_caught():
    texts = {
        "shown": 'rule shown:\n    output:\n        "results/figures/shown.png",\n',
        "hidden": 'rule hidden:\n    output:\n        figure_png("hidden"),\n',
    }
    outputs = ["results/figures/shown.png", "results/figures/hidden_figure.png"]
    assert hidden_outputs(outputs, texts) == ["results/figures/hidden_figure.png"]


# --- every figure is saved by plots.common.save_figure (undated, atomic) ----------------------


def savefig_callers(paths) -> list[str]:
    """file:function of each function of the given files, save_figure aside, that calls
    `.savefig(`."""
    found = set()
    for path in paths:
        for node in ast.walk(_tree(path)):
            if isinstance(node, ast.FunctionDef) and node.name != "save_figure":
                calls = [n for n in ast.walk(node) if isinstance(n, ast.Call)]
                if any(getattr(c.func, "attr", None) == "savefig" for c in calls):
                    found.add(f"{Path(path).name}:{node.name}")
    return sorted(found)


def test_every_figure_is_saved_through_save_figure():
    """A figure saved with fig.savefig keeps its PDF's creation date, so a rerun never gives
    the same bytes (the method table's figure did), and a killed job can leave half a file."""
    paths = [*PACKAGE.rglob("*.py"), *(ROOT / "workflow" / "scripts").glob("*.py")]
    assert savefig_callers(paths) == []


def test_a_figure_saved_beside_save_figure_is_caught(tmp_path):
    script = tmp_path / "fig.py"
    script.write_text("def draw(fig, out):\n    fig.savefig(out)\n")
    assert savefig_callers([script]) == ["fig.py:draw"]
