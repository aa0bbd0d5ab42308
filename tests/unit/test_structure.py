"""The package keeps its shape: no import cycle, imports point down the layers,
and optional abilities of targets and ledgers are found by type, never by name.

``scripts/structure.py`` measures the same (and module/function sizes) for people.
"""

from __future__ import annotations

import ast
import importlib.util
import sys
from pathlib import Path
from types import ModuleType

ROOT = Path(__file__).resolve().parents[2]

#: Methods that are optional abilities of targets and ledgers (targets/base.py,
#: engine/ledger.py): looking one up by name turns an optimisation off silently
#: when it is renamed, so ``getattr``/``hasattr`` with these names is refused.
ABILITY_NAMES = frozenset(
    {
        "referrers_api_supported",
        "listed_referrers",
        "ensure_referrers_listed",
        "unlist_referrers",
        "repository_is_new",
        "stats",
        "cancel_upload",
        "catalog",
        "flush",
        "forget",
        "is_local",
    }
)


def _structure() -> ModuleType:
    spec = importlib.util.spec_from_file_location("structure", ROOT / "scripts" / "structure.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["structure"] = module
    spec.loader.exec_module(module)
    return module


def test_no_import_cycle_inside_the_package() -> None:
    s = _structure()
    assert s.cycles(s.import_graph(s.modules())) == []


def test_imports_point_down_the_layers() -> None:
    s = _structure()
    assert s.upward_imports(s.import_graph(s.modules())) == []


def test_no_ability_is_looked_up_by_its_name() -> None:
    offenders = []
    for path in sorted((ROOT / "replicator").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Name)):
                continue
            if node.func.id not in ("getattr", "hasattr") or len(node.args) < 2:
                continue
            name = node.args[1]
            if isinstance(name, ast.Constant) and name.value in ABILITY_NAMES:
                offenders.append(f"{path.relative_to(ROOT)}:{node.lineno}: {name.value}")
    assert offenders == []


def test_the_engine_keeps_its_modules_and_functions_small() -> None:
    s = _structure()
    engine = [m for m in s.modules() if m.name.startswith("replicator.engine")]
    assert engine
    assert [m.name for m in engine if m.lines > 500] == []
    long = [f"{m.name}:{f} ({n})" for m in engine for f, n in s.functions(m) if n > 60]
    assert long == []
