"""The package's shape (docs/design.md, "Layout"): no import cycle among smollm's modules, the library
never imports a command (smollm/cli/, a package's __main__.py), no module grows past MAX_LINES, and
the training loop stays short enough to read at a glance. Imports are read with `ast`, function-level
ones included: a cycle hidden in a function is still a cycle."""

import ast
import os

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACKAGE = os.path.join(ROOT, "smollm")
MAX_LINES = 450
MAX_LOOP_LINES = 60  # smollm.training.loop.train, docstring included


def modules(root: str = PACKAGE) -> dict[str, str]:
    """{dotted name: path} of every module under smollm/ (a package is its __init__.py)."""
    out = {}
    for folder, dirs, files in os.walk(root):
        dirs[:] = sorted(d for d in dirs if os.path.isfile(os.path.join(folder, d, "__init__.py")))
        for f in files:
            if f.endswith(".py"):
                rel = os.path.relpath(os.path.join(folder, f), os.path.dirname(root))[:-3].split(os.sep)
                out[".".join(rel[:-1] if rel[-1] == "__init__" else rel)] = os.path.join(folder, f)
    return out


def imported(name: str, path: str, known: set[str]) -> set[str]:
    """The modules of `known` that the module `name` imports anywhere in its text."""
    is_package = path.endswith("__init__.py")
    tree = ast.parse(open(path, encoding="utf-8").read(), path)
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: from the module's own package
                parts = name.split(".")[:len(name.split(".")) - node.level + (1 if is_package else 0)]
                base = ".".join(parts + ([base] if base else []))
            # `from a import b` imports a.b when a.b is a module, else a name of a
            targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in known else base for a in node.names]
        else:
            continue
        for t in targets:
            while t and t not in known:  # `import smollm.x.y` of a name inside a module: that module
                t = t.rpartition(".")[0]
            if t and t != name:
                found.add(t)
    return found


def import_graph() -> dict[str, set[str]]:
    mods = modules()
    return {name: imported(name, path, set(mods)) for name, path in mods.items()}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle of the graph (a path that comes back to its start), or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            if nxt not in state:
                cycle = visit(nxt)
                if cycle:
                    return cycle
        state[node] = 2
        path.pop()
        return None

    for node in sorted(graph):
        if node not in state:
            cycle = visit(node)
            if cycle:
                return cycle
    return None


def is_command(name: str) -> bool:
    return name == "smollm.cli" or name.startswith("smollm.cli.") or name.endswith(".__main__")


def test_no_import_cycle():
    cycle = find_cycle(import_graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_the_library_never_imports_a_command():
    graph = import_graph()
    bad = {m: sorted(t for t in targets if is_command(t)) for m, targets in graph.items() if not is_command(m)}
    bad = {m: t for m, t in bad.items() if t}
    assert not bad, f"library modules that import command modules: {bad}"


def test_no_module_is_too_long():
    long = {name: n for name, path in modules().items()
            if (n := sum(1 for _ in open(path, encoding="utf-8"))) > MAX_LINES}
    assert not long, f"modules over {MAX_LINES} lines (split them by concern): {long}"


def test_the_training_loop_reads_at_a_glance():
    path = os.path.join(PACKAGE, "training", "loop.py")
    tree = ast.parse(open(path, encoding="utf-8").read())
    train = next(n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == "train")
    lines = train.end_lineno - train.lineno + 1
    assert lines <= MAX_LOOP_LINES, f"smollm.training.loop.train is {lines} lines (at most {MAX_LOOP_LINES})"


# ---------------------------------------------------------------- the checks themselves can fail --

def test_find_cycle_sees_a_cycle_and_a_clean_graph():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b", "c"}, "b": {"c"}, "c": set()}) is None


@pytest.mark.parametrize("text, expected", [
    ("import smollm.b\n", {"smollm.b"}),
    ("from smollm import b\n", {"smollm.b"}),
    ("from smollm.b import f\n", {"smollm.b"}),
    ("def g():\n    from . import b\n", {"smollm.b"}),  # function-level and relative imports count
    ("from .pkg import c\n", {"smollm.pkg.c"}),
    ("import os\nimport torch\n", set()),
])
def test_imports_are_read_from_the_text(tmp_path, text, expected):
    path = tmp_path / "a.py"
    path.write_text(text)
    known = {"smollm", "smollm.a", "smollm.b", "smollm.pkg", "smollm.pkg.c"}
    assert imported("smollm.a", str(path), known) == expected
