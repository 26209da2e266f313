"""The package's layout: imports flow one way between subpackages, and no module imports itself back.

Every import counts, also those inside functions and under TYPE_CHECKING: a deferred import is still
a dependency, and a circle hidden behind one is still a circle.
"""

from __future__ import annotations

import ast
from pathlib import Path

from conftest import ROOT

PACKAGE = ROOT / "bcmb_jax"
CORE = "core"  # the modules directly in bcmb_jax/: errors, atomic, cli, runconfig
# What each part of the package may use besides itself. The root `bcmb_jax/__init__.py` (the public
# API) may use everything and nothing may use it.
MAY_USE = {
    CORE: set(),
    "modeling": {CORE},
    "weights": {CORE, "modeling"},
    "data": {CORE, "modeling"},
    "training": {CORE, "modeling", "weights", "data"},
    "evaluation": {CORE, "modeling", "weights", "data", "training"},
}


def modules() -> dict[str, Path]:
    out = {}
    for p in PACKAGE.rglob("*.py"):
        parts = p.relative_to(ROOT).with_suffix("").parts
        out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = p
    return out


def imports(name: str, path: Path, known: dict[str, Path]) -> set[str]:
    """The package modules `name` imports (a name imported from a package is the package, a submodule itself)."""
    is_package = path.name == "__init__.py"
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.split(".")[0] == "bcmb_jax"}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = name.split(".")[: len(name.split(".")) - node.level + is_package]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if target.split(".")[0] != "bcmb_jax":
                continue
            for a in node.names:
                found.add(f"{target}.{a.name}" if f"{target}.{a.name}" in known else target)
    return found - {name}


def part(module: str) -> str:
    """core, a subpackage name, or "root" for the package's public API."""
    parts = module.split(".")
    if len(parts) == 1:
        return "root"
    return parts[1] if (PACKAGE / parts[1]).is_dir() else CORE


def graph() -> dict[str, set[str]]:
    known = modules()
    return {name: imports(name, path, known) for name, path in known.items()}


def test_subpackages_are_the_layout():
    dirs = sorted(p.name for p in PACKAGE.iterdir() if p.is_dir() and (p / "__init__.py").is_file())
    assert dirs == sorted(set(MAY_USE) - {CORE})
    for d in dirs:
        init = PACKAGE / d / "__init__.py"
        doc = ast.get_docstring(ast.parse(init.read_text()))
        assert doc and len(doc.split()) > 20, f"{init}: say what the subpackage owns"


def test_imports_flow_one_way():
    wrong = []
    for module, deps in graph().items():
        here = part(module)
        for dep in deps:
            there = part(dep)
            if there == "root":
                wrong.append(f"{module} imports the public API package {dep}")
            elif here != "root" and there != here and there not in MAY_USE[here]:
                wrong.append(f"{module} ({here}) imports {dep} ({there})")
    assert not wrong, "\n".join(sorted(wrong))


def test_no_import_circles():
    g = graph()
    index, low, stack, on_stack, circles = {}, {}, [], set(), []

    def visit(v):  # Tarjan's strongly connected components
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in g.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                circles.append(sorted(component))

    for v in sorted(g):
        if v not in index:
            visit(v)
    assert not circles, circles


def test_the_checker_sees_circles_and_upward_imports(tmp_path):
    """The checks above can fail: a deferred import inside a function is found and resolved."""
    src = tmp_path / "m.py"
    src.write_text("def f():\n    from bcmb_jax.training import optim\n    from bcmb_jax.modeling.model import build\n")
    found = imports("bcmb_jax.modeling.x", src, modules())
    assert found == {"bcmb_jax.training.optim", "bcmb_jax.modeling.model"}
    assert part("bcmb_jax.training.optim") not in MAY_USE[part("bcmb_jax.modeling.x")]
