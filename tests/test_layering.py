"""The architecture's import rule, checked on the source (ARCHITECTURE.md, "The import rule").

Every import counts, module-level or inside a function. A module may import from its own room and
from rooms below it; rooms on one layer do not import each other; nothing imports ``tunekv.cli``;
no underscore name is imported from another module."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SOURCES = {"tunekv": ROOT / "tunekv", "tunekv.engine": ROOT / "engine", "tunekv.kernels": ROOT / "kernels"}

# Lowest first. A room is a module or a package prefix; rooms on one layer are independent.
LAYERS: list[tuple[str, ...]] = [
    ("tunekv.kernels",),
    ("tunekv.engine",),
    ("tunekv", "tunekv.errors"),
    ("tunekv.units", "tunekv.home", "tunekv.fileio", "tunekv.smollm2"),
    ("tunekv.defaults", "tunekv.hardware", "tunekv.workload"),
    ("tunekv.predict", "tunekv.serve"),
    ("tunekv.measure",),
    ("tunekv.export",),
    ("tunekv.search",),
    ("tunekv.render",),
    ("tunekv.tui",),
    ("tunekv.cli",),
    ("tunekv.__main__",),
]
# The package face (``tunekv/__init__.py``, the version string) is read by every layer and imports
# nothing; as a room it holds only itself.
ANYONE_MAY_IMPORT = {"tunekv"}


def modules() -> dict[str, Path]:
    found = {}
    for package, base in SOURCES.items():
        for path in base.rglob("*.py"):
            parts = list(path.relative_to(base).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            found[".".join([package, *parts])] = path
    return found


MODULES = modules()


def room(module: str) -> tuple[int, str]:
    """(layer index, room name) of a module: the longest room prefix that matches."""
    best: tuple[int, str] | None = None
    for index, rooms in enumerate(LAYERS):
        for name in rooms:
            prefix = name != "tunekv" and module.startswith(name + ".")
            if (module == name or prefix) and (best is None or len(name) > len(best[1])):
                best = (index, name)
    assert best is not None, f"{module} belongs to no room: add it to LAYERS and ARCHITECTURE.md"
    return best


def imports(module: str, path: Path) -> list[tuple[str, str | None, int]]:
    """(imported module, imported name or None, line) for every import in ``path``."""
    tree = ast.parse(path.read_text(), str(path))
    is_package = path.name == "__init__.py"
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [(alias.name, None, node.lineno) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = module.split(".")
                parts = parts[: len(parts) - node.level + (1 if is_package else 0)]
                base = ".".join(parts + ([base] if base else []))
            for alias in node.names:
                full = f"{base}.{alias.name}"
                out.append((full, None, node.lineno) if full in MODULES else (base, alias.name, node.lineno))
    return [(target, name, line) for target, name, line in out if target.split(".")[0] == "tunekv"]


def resolve(target: str) -> str:
    while target and target not in MODULES:
        target = target.rpartition(".")[0]
    return target


def violations() -> list[str]:
    found = []
    for module, path in sorted(MODULES.items()):
        layer, own = room(module)
        for target, name, line in imports(module, path):
            target = resolve(target)
            where = f"{path.relative_to(ROOT) if path.is_relative_to(ROOT) else path}:{line}"
            if name is not None and name.startswith("_") and not name.startswith("__") and target != module:
                found.append(f"{where}: imports the private name {target}.{name}")
            if not target or target == module or target in ANYONE_MAY_IMPORT:
                continue
            target_layer, target_room = room(target)
            if target_room == "tunekv.cli" and own != "tunekv.cli" and module != "tunekv.__main__":
                found.append(f"{where}: imports {target}; nothing imports the CLI")
            elif target_layer > layer:
                found.append(f"{where}: {own} imports {target} from the higher room {target_room}")
            elif target_layer == layer and target_room != own:
                found.append(f"{where}: {own} imports {target}; rooms on one layer stay independent")
    return found


def test_every_module_has_a_room():
    for module in MODULES:
        room(module)


def test_imports_point_down_the_layers():
    assert violations() == []


@pytest.mark.parametrize("line, message", [
    ("from tunekv.cli.main import main", "nothing imports the CLI"),
    ("from tunekv.search.ladder import Search", "from the higher room tunekv.search"),
    ("from tunekv.hardware.gpus import GpuSpec", "rooms on one layer stay independent"),
    ("from tunekv.search.trials import _release", "imports the private name"),
])
def test_the_rule_catches_a_wrong_import(tmp_path, monkeypatch, line, message):
    """The check itself fails on a new upward, sideways, CLI or private import."""
    bad = tmp_path / "bad.py"
    bad.write_text(f"{line}\n")
    monkeypatch.setitem(MODULES, "tunekv.workload.bad", bad)
    assert any(message in v for v in violations())


def test_no_test_module_imports_another():
    """Shared test code lives in helper modules (tests/tunekv/helpers.py, tui_helpers.py, run_cli.py,
    tests/engine/hf_models.py) or conftest.py, never in a test module another one imports."""
    found = []
    for path in sorted((ROOT / "tests").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module, *(f"{node.module}.{alias.name}" for alias in node.names)]
            else:
                continue
            found += [f"{path.relative_to(ROOT)}:{node.lineno}: imports {name}" for name in names
                      if name.startswith("tests.") and name.rpartition(".")[2].startswith("test_")]
    assert found == []
