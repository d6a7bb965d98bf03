"""The package's layers import one way, and no module imports another in a cycle.

Layers, top to bottom (a module may import its own layer and the layers below it):

    cli, the ``hemeplm`` facade (``hemeplm.load``)
    generate, train, evaluate, forcefield, viewer
    models, config, diffusion, tasks
    data
    geometry
    io, errors, device, plots

On top of that, ``evaluate`` never imports ``generate`` (it scores files, whoever wrote them). Imports
of the package's own modules sit at module level; the one exception is an import deferred for an
optional heavy dependency, which says so in a ``# deferred:`` comment on its line.
"""

from __future__ import annotations

import ast
from pathlib import Path

from conftest import ROOT

LAYERS = (
    ("hemeplm.cli", "hemeplm"),
    ("hemeplm.generate", "hemeplm.train", "hemeplm.evaluate", "hemeplm.forcefield", "hemeplm.viewer"),
    ("hemeplm.models", "hemeplm.config", "hemeplm.diffusion", "hemeplm.tasks"),
    ("hemeplm.data",),
    ("hemeplm.geometry",),
    ("hemeplm.io", "hemeplm.errors", "hemeplm.device", "hemeplm.plots"),
)
FORBIDDEN = {("hemeplm.evaluate", "hemeplm.generate")}


def module_name(path: Path, root: Path) -> str:
    parts = path.relative_to(root).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules(root: Path) -> dict[str, Path]:
    return {module_name(p, root): p for p in sorted((root / "hemeplm").rglob("*.py"))}


def package_imports(path: Path, root: Path, known: set[str]) -> list[tuple[str, int, bool]]:
    """(imported module, line, inside a function and not deferred) of each import of the package's modules."""
    text = path.read_text()
    lines = text.splitlines()
    name = module_name(path, root)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = []
    for node in ast.walk(ast.parse(text)):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")
                base = ".".join(parts[: len(parts) - node.level + 1] + ([base] if base else []))
            # ``from pkg import module`` runs pkg/__init__.py too: an edge to both
            targets = [t for a in node.names
                       for t in ((base, f"{base}.{a.name}") if f"{base}.{a.name}" in known else (base,))]
        else:
            continue
        deferred = "# deferred:" in lines[node.lineno - 1]
        found += [(t, node.lineno, node.col_offset > 0 and not deferred) for t in targets
                  if t == "hemeplm" or t.startswith("hemeplm.")]
    return found


def layer(module: str) -> int:
    """Index in LAYERS of the longest name that contains the module."""
    best = max(((len(n), i) for i, names in enumerate(LAYERS) for n in names
                if module == n or module.startswith(n + ".")), default=None)
    assert best is not None, f"{module} belongs to no layer; add it to LAYERS"
    return best[1]


def layer_violations(root: Path) -> list[str]:
    mods = modules(root)
    bad = []
    for name, path in mods.items():
        where = path.relative_to(root)
        for target, line, inner in package_imports(path, root, set(mods)):
            if layer(target) < layer(name):
                bad.append(f"{where}:{line}: {name} imports {target} from a higher layer")
            bad += [f"{where}:{line}: {name} must not import {target}" for low, high in FORBIDDEN
                    if name.startswith(low) and target.startswith(high)]
            if inner:
                bad.append(f"{where}:{line}: {name} imports {target} inside a function")
    return bad


def cycles(root: Path) -> list[str]:
    mods = modules(root)
    edges = {}
    for name, path in mods.items():
        named = {t for t, _, _ in package_imports(path, root, set(mods)) if t in mods}
        # importing a.b.c runs a/__init__.py and a/b/__init__.py first (a module's own packages are already running)
        implied = {".".join(t.split(".")[:k]) for t in named for k in range(2, t.count(".") + 1)}
        edges[name] = sorted((named | {t for t in implied if not name.startswith(t + ".")}) & set(mods) - {name})
    state: dict[str, int] = {}
    stack: list[str] = []
    found = []

    def visit(node: str) -> None:
        state[node] = 1
        stack.append(node)
        for nxt in edges[node]:
            if state.get(nxt) == 1:
                found.append(" -> ".join(stack[stack.index(nxt):] + [nxt]))
            elif nxt not in state:
                visit(nxt)
        stack.pop()
        state[node] = 2

    for node in edges:
        if node not in state:
            visit(node)
    return found


def test_every_module_has_a_layer():
    for name in modules(ROOT):
        layer(name)


def test_imports_go_down_the_layers():
    bad = layer_violations(ROOT)
    assert not bad, "\n".join(bad)


def test_no_import_cycles():
    found = cycles(ROOT)
    assert not found, "\n".join(found)


def test_the_checks_catch_a_planted_cycle_and_upward_import(tmp_path):
    pkg = tmp_path / "hemeplm"
    (pkg / "data").mkdir(parents=True)
    (pkg / "__init__.py").write_text("def load():\n    from hemeplm.cli import main  # deferred: a facade\n")
    (pkg / "data" / "__init__.py").write_text("")
    (pkg / "data" / "load.py").write_text("from hemeplm.cli import main\n")
    (pkg / "cli.py").write_text("def main():\n    from hemeplm.data import draw, load\n")
    (pkg / "io.py").write_text("from . import errors\n")
    (pkg / "geometry").mkdir()
    (pkg / "geometry" / "__init__.py").write_text("from hemeplm.geometry.b import x\n")
    (pkg / "geometry" / "a.py").write_text("")
    (pkg / "geometry" / "b.py").write_text("from hemeplm.data.load import x\nfrom hemeplm.geometry.a import y\n")
    (pkg / "errors.py").write_text("from hemeplm.io import x\n")
    (pkg / "plots.py").write_text("")
    (pkg / "data" / "draw.py").write_text("from hemeplm import plots\n")
    bad = layer_violations(tmp_path)
    assert any("hemeplm.data.load imports hemeplm.cli from a higher layer" in b for b in bad)
    assert any("hemeplm.cli imports hemeplm.data.load inside a function" in b for b in bad)
    found = [set(c.split(" -> ")) for c in cycles(tmp_path)]
    assert {"hemeplm.io", "hemeplm.errors"} in found
    # the package facade reaches up to cli, and draw comes back through the package's name
    assert {"hemeplm", "hemeplm.cli", "hemeplm.data.draw"} in found, found
    assert {"hemeplm.geometry", "hemeplm.geometry.b"} not in found   # a package importing its own module
    assert any("hemeplm.geometry.b imports hemeplm.data.load from a higher layer" in b for b in bad)
