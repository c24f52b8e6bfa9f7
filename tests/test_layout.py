"""The package layout keeps its promises (ARCHITECTURE.md): one function per rule in
selfrepair.stages, named after the rule; small modules and functions; `__all__` everywhere."""

import ast
import importlib
import re
import subprocess
import sys

import pytest
from helpers import ROOT

from selfrepair.config.figures import FIGURES

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
    calls that function."""
    rules = [r for r in _rules() if r != "all"]
    assert len(rules) >= 25
    stages = {
        p.stem: importlib.import_module(f"selfrepair.stages.{p.stem}")
        for p in (PACKAGE / "stages").glob("*.py")
        if p.stem != "__init__"
    }
    for rule in rules:
        homes = [name for name, module in stages.items() if rule in getattr(module, "__all__", ())]
        assert len(homes) == 1, f"rule {rule}: stage function in {homes or 'no stages module'}"
        assert callable(getattr(stages[homes[0]], rule))
        script = (ROOT / "workflow" / "scripts" / _script_of(rule)).read_text()
        assert re.search(rf"\b{rule}\b", script), f"rule {rule}'s script does not call {rule}"


def _script_of(rule: str) -> str:
    """The script a rule runs: named in its rules file, or (figures) in the figure list."""
    figure = [f for f in FIGURES if f.rule == rule]
    if figure:
        return figure[0].script
    smk = "\n".join(p.read_text() for p in (ROOT / "workflow" / "rules").glob("*.smk"))
    block = re.search(rf"^rule {rule}:\n(.*?)(?=^\S|\Z)", smk, re.M | re.S)
    assert block, f"rule {rule} not found in workflow/rules"
    return re.search(r'script:\s*"\.\./scripts/([\w.]+)"', block.group(1)).group(1)
