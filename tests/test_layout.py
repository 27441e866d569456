"""The tracer's layout keeps the shape issue 12 gave it: every module at the
folder path of its import name, modules and classes of a readable size,
folders of a few modules, and no import cycle between modules."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
PACKAGES = {"recorder_tracer": REPO / "tracer" / "recorder_tracer",
            "recorder": REPO / "pyapi" / "recorder"}
MAX_MODULE_LINES = 450
MAX_CLASS_LINES = 300
MAX_FOLDER_MODULES = 12


def modules() -> dict[str, Path]:
    """Import name -> file, from the folder paths."""
    found = {}
    for package, root in PACKAGES.items():
        for path in sorted(root.rglob("*.py")):
            parts = [package, *path.relative_to(root).with_suffix("").parts]
            if parts[-1] == "__init__":
                parts.pop()
            found[".".join(parts)] = path
    return found


def extensions() -> set[str]:
    """C extension modules, known by their stubs (recorder._core)."""
    return {f"{package}.{stub.stem}" for package, root in PACKAGES.items()
            for stub in root.glob("*.pyi")}


def imports_of(path: Path) -> set[str]:
    """The first-party modules `path` imports, at any level."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return {name for name in names if name.split(".")[0] in PACKAGES}


def test_tracer_root_holds_only_the_package() -> None:
    assert [p.name for p in (REPO / "tracer").iterdir()
            if p.name != "__pycache__"] == ["recorder_tracer"]
    assert not list((REPO / "pyapi").glob("*.py"))


@pytest.mark.parametrize("name", sorted(modules()))
def test_module_is_short(name: str) -> None:
    lines = len(modules()[name].read_text().splitlines())
    assert lines <= MAX_MODULE_LINES, f"{name}: {lines} lines"


@pytest.mark.parametrize("name", sorted(modules()))
def test_classes_are_short(name: str) -> None:
    tree = ast.parse(modules()[name].read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.ClassDef):
            length = node.end_lineno - node.lineno + 1
            assert length <= MAX_CLASS_LINES, f"{name}.{node.name}: {length}"


def test_folders_hold_few_modules() -> None:
    for root in PACKAGES.values():
        for folder in [root, *[p for p in root.rglob("*") if p.is_dir()]]:
            count = len([p for p in folder.glob("*.py")
                         if p.name not in ("__init__.py", "__main__.py")])
            assert count <= MAX_FOLDER_MODULES, f"{folder}: {count} modules"


def test_every_first_party_import_names_a_module_file() -> None:
    known = set(modules()) | extensions()
    for name, path in modules().items():
        for imported in imports_of(path):
            # `from package import name` may name a module or an attribute.
            assert imported in known or imported.rpartition(".")[0] in known, \
                f"{name} imports {imported}"


def test_no_import_cycle_between_modules() -> None:
    known = modules()
    graph = {name: {imported if imported in known else imported.rpartition(".")[0]
                    for imported in imports_of(path)} - {name}
             for name, path in known.items()}
    # A package's __init__ importing its own submodules is not a cycle of
    # modules: drop edges into a package from the modules inside it.
    graph = {name: {target for target in targets
                    if not name.startswith(target + ".")}
             for name, targets in graph.items()}
    state: dict[str, int] = {}      # 1: on the path, 2: done
    path: list[str] = []

    def visit(name: str) -> None:
        state[name] = 1
        path.append(name)
        for target in sorted(graph.get(name, ())):
            if state.get(target) == 1:
                cycle = [*path[path.index(target):], target]
                pytest.fail("import cycle: " + " -> ".join(cycle))
            if target not in state:
                visit(target)
        path.pop()
        state[name] = 2

    for name in sorted(graph):
        if name not in state:
            visit(name)
