"""Measure the package's shape: module and function sizes, import cycles, layering.

    python scripts/structure.py [--max-module N] [--max-function N]

Prints the modules over ``--max-module`` lines (default 500) and the functions
over ``--max-function`` lines (default 60), every import cycle inside
``replicator/`` (module-level and ``TYPE_CHECKING`` imports alike; imports inside
functions too), and imports that point up the layers.  Exit 1 when a cycle or
an upward import exists.  ``tests/unit/test_structure.py`` runs the same checks.
"""

from __future__ import annotations

import argparse
import ast
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "replicator"

#: Layers from the top down; a module may import its own layer and the ones below.
#: ``errors`` and ``observe`` are used by every layer.
LAYERS: tuple[tuple[str, ...], ...] = (
    ("replicator.__main__", "replicator.cli"),
    ("replicator.bundle",),
    ("replicator.sync",),
    ("replicator.journal",),
    ("replicator.engine", "replicator.artifacts"),
    ("replicator.graph",),
    ("replicator.targets",),
    ("replicator.oci",),
)
EVERYWHERE = ("replicator.errors", "replicator.observe", "replicator")


@dataclass(frozen=True)
class Module:
    """One module of the package: its dotted name, file and parsed tree."""

    name: str
    path: Path
    tree: ast.Module
    lines: int


def modules() -> list[Module]:
    """Every module of ``replicator/``."""
    out = []
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = path.relative_to(ROOT).with_suffix("")
        parts = list(rel.parts)
        if parts[-1] == "__init__":
            parts.pop()
        text = path.read_text(encoding="utf-8")
        out.append(Module(".".join(parts), path, ast.parse(text), len(text.splitlines())))
    return out


def imports_of(module: Module, known: set[str]) -> set[str]:
    """Package modules ``module`` imports (resolved to the longest known name)."""
    found: set[str] = set()
    for node in ast.walk(module.tree):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module:
            base = node.module
            if node.level:
                pkg = module.name.split(".")
                if module.path.name != "__init__.py":
                    pkg = pkg[:-1]
                pkg = pkg[: len(pkg) - node.level + 1]
                base = ".".join([*pkg, node.module])
            # ``from pkg import mod`` imports the module pkg.mod; ``from mod import
            # name`` imports mod.
            names = [
                f"{base}.{a.name}" if f"{base}.{a.name}" in known else base for a in node.names
            ]
        for name in names:
            if not name.startswith("replicator"):
                continue
            best = max(
                (k for k in known if name == k or name.startswith(k + ".")), key=len, default=None
            )
            if best is not None and best != module.name:
                found.add(best)
    return found


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[list[str]] = []
    counter = [0]

    def visit(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    sys.setrecursionlimit(10000)
    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def layer_of(name: str) -> int | None:
    """Index of the layer holding ``name`` (None for modules used everywhere)."""
    for i, layer in enumerate(LAYERS):
        if any(name == p or name.startswith(p + ".") for p in layer):
            return i
    return None


def upward_imports(graph: dict[str, set[str]]) -> list[tuple[str, str]]:
    """``(importer, imported)`` pairs where a lower layer imports a higher one."""
    bad = []
    for src, targets in graph.items():
        ls = layer_of(src)
        for dst in targets:
            if dst in EVERYWHERE or any(dst.startswith(p + ".") for p in EVERYWHERE[:2]):
                continue
            ld = layer_of(dst)
            if ls is not None and ld is not None and ld < ls:
                bad.append((src, dst))
    return sorted(bad)


def functions(module: Module) -> Iterator[tuple[str, int]]:
    """``(qualified name, lines)`` of every function and method."""

    def walk(node: ast.AST, prefix: str) -> Iterator[tuple[str, int]]:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef):
                name = f"{prefix}{child.name}"
                end = child.end_lineno or child.lineno
                yield name, end - child.lineno + 1
                yield from walk(child, name + ".")
            elif isinstance(child, ast.ClassDef):
                yield from walk(child, f"{prefix}{child.name}.")

    yield from walk(module.tree, "")


def import_graph(mods: list[Module]) -> dict[str, set[str]]:
    """Module -> package modules it imports."""
    known = {m.name for m in mods}
    return {m.name: imports_of(m, known) for m in mods}


def main(argv: list[str] | None = None) -> int:
    """Print the report; exit 1 on a cycle or an upward import."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--max-module", type=int, default=500)
    p.add_argument("--max-function", type=int, default=60)
    args = p.parse_args(argv)
    mods = modules()
    print(f"{len(mods)} modules, {sum(m.lines for m in mods)} lines")
    big = [(m.lines, m.name) for m in mods if m.lines > args.max_module]
    print(f"modules over {args.max_module} lines: {len(big)}")
    for lines, name in sorted(big, reverse=True):
        print(f"  {lines:5d}  {name}")
    long = [(n, f"{m.name}:{f}") for m in mods for f, n in functions(m) if n > args.max_function]
    print(f"functions over {args.max_function} lines: {len(long)}")
    for lines, name in sorted(long, reverse=True):
        print(f"  {lines:5d}  {name}")
    graph = import_graph(mods)
    found = cycles(graph)
    print(f"import cycles: {len(found)}")
    for comp in found:
        print("  " + " <-> ".join(comp))
    up = upward_imports(graph)
    print(f"imports pointing up the layers: {len(up)}")
    for src, dst in up:
        print(f"  {src} -> {dst}")
    return 1 if found or up else 0


if __name__ == "__main__":
    sys.exit(main())
