"""The package's import graph, read from its source with `ast` (imports at module level and inside
functions alike; `if TYPE_CHECKING:` blocks and importlib strings left out): no circle, and the
computation below the drawing (analysis, engine, config, data, ...) never imports plots."""

import ast
from pathlib import Path

from helpers import ROOT

PACKAGE = ROOT / "selfrepair"
# The layers that draw nothing: none of them may import selfrepair.plots.
BELOW_PLOTS = ("analysis", "engine", "config", "data", "mechanisms", "models", "tasks")


def module_name(path: Path, root: Path = ROOT) -> str:
    parts = path.relative_to(root).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _type_checking(node: ast.AST) -> bool:
    test = getattr(node, "test", None)
    return isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(test)


def _import_nodes(tree: ast.AST):
    """Every Import and ImportFrom, at any depth, outside `if TYPE_CHECKING:` blocks."""
    stack = [tree]
    while stack:
        node = stack.pop()
        if _type_checking(node):
            continue
        if isinstance(node, ast.Import | ast.ImportFrom):
            yield node
        stack.extend(ast.iter_child_nodes(node))


def imported_modules(path: Path, known: set[str], root: Path = ROOT) -> set[str]:
    """The package modules a module imports: `from a.b import c` is a.b.c where that is a
    module, else a.b; relative imports resolved against the module's package; and the packages
    above each (importing a.b.c runs a.b's __init__) but the importer's own."""
    name = module_name(path, root)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in _import_nodes(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
            continue
        base = node.module or ""
        if node.level:
            anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
            base = ".".join([*anchor, base] if base else anchor)
        for alias in node.names:
            found.add(f"{base}.{alias.name}" if f"{base}.{alias.name}" in known else base)
    parents = {".".join(m.split(".")[:i]) for m in found for i in range(2, m.count(".") + 1)}
    own = {".".join(name.split(".")[:i]) for i in range(1, name.count(".") + 2)}
    return {m for m in found | parents if m in known and m not in own}


def import_graph(package: Path = PACKAGE) -> dict[str, set[str]]:
    """Each module of the package (dotted name) -> the package modules it imports."""
    root = package.parent
    paths = sorted(package.rglob("*.py"))
    known = {module_name(p, root) for p in paths}
    return {module_name(p, root): imported_modules(p, known, root) for p in paths}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One circle of the graph (its modules, the first repeated at the end), or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return [*path[path.index(nxt) :], nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        path.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def test_the_graph_reader_sees_function_level_imports_and_circles(tmp_path):
    pkg = tmp_path / "selfrepair"
    (pkg / "a").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "a" / "__init__.py").write_text("from selfrepair.a.x import f\n")
    (pkg / "a" / "x.py").write_text("def f():\n    from selfrepair.b import g\n")
    (pkg / "b.py").write_text(
        "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    import selfrepair.a\n"
        "def g():\n    from . import a\n"
    )
    (pkg / "c.py").write_text("import selfrepair.a.x\n")
    graph = import_graph(pkg)
    assert graph["selfrepair.a.x"] == {"selfrepair.b"}
    assert graph["selfrepair.c"] == {"selfrepair.a", "selfrepair.a.x"}  # a's __init__ runs
    assert graph["selfrepair.b"] == {"selfrepair.a"}
    cycle = find_cycle(graph)
    assert cycle is not None and set(cycle) == {"selfrepair.a", "selfrepair.a.x", "selfrepair.b"}


def test_the_package_imports_no_circle():
    """Counting the imports inside functions too: a circle there holds only while those imports
    stay inside functions, and the first one moved to the top fails at import time."""
    cycle = find_cycle(import_graph())
    assert cycle is None, "import circle: " + " -> ".join(cycle or [])


def test_nothing_below_the_drawing_imports_plots():
    """Labels and numbers live below plots (variables, analysis); plots only draw them."""
    wrong = [
        f"{name} imports {target}"
        for name, targets in import_graph().items()
        if name.split(".")[1:2] and name.split(".")[1] in BELOW_PLOTS
        for target in sorted(targets)
        if target.startswith("selfrepair.plots")
    ]
    assert not wrong, "; ".join(wrong)


def _code_strings(tree: ast.AST) -> list[str]:
    """The string constants of a module but its docstrings."""
    docs = {
        id(node.body[0].value)
        for node in ast.walk(tree)
        if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef)
        and node.body
        and isinstance(node.body[0], ast.Expr)
        and isinstance(node.body[0].value, ast.Constant)
    }
    return [
        node.value
        for node in ast.walk(tree)
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docs
    ]


def test_the_package_reads_no_rules_file():
    """Settings live in the package and the rules read them (common.smk); a job's stage comes
    from Snakemake with the job (config.storage.stage_of), never from parsing workflow/rules."""
    wrong = [
        f"{path.relative_to(ROOT)}: {text!r}"
        for path in sorted(PACKAGE.rglob("*.py"))
        for text in _code_strings(ast.parse(path.read_text()))
        if text == "rules" or text.endswith(".smk") or "workflow/rules" in text
    ]
    assert not wrong, "; ".join(wrong)
