"""The house's rule, checked on the code itself: every import points down a floor (or stays in its room),
there are no import cycles, and distillation never imports a reader or writer of other tools' files."""

from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src" / "frepo"

# Floors, ground first. A module may import from a lower floor, or from its own room (a folder).
FLOORS = [
    {"base"},  # errors, seeds, devices, processes, atomic files, typed fields, logging, version
    {"config"},  # what a run is, and its named presets (the paper's settings, small CPU budgets)
    {"models"},  # networks
    {"data", "method"},  # datasets and preprocessing; FRePo itself on tensors
    {"io"},  # the distilled-set file, other tools' files, exports
    {"eval"},  # protocols, their configs, results
    {"jobs"},  # one module per command (distill, evaluate, subset, report, reproduce) and their parts
    {"apps"},  # downstream experiments
    {"cli"},
    {"__init__", "__main__"},
]
FLOOR = {room: i for i, rooms in enumerate(FLOORS) for room in rooms}


def _module(path: Path) -> str:
    parts = path.relative_to(SRC.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {_module(p): p for p in SRC.rglob("*.py")}


def _room(module: str) -> str:
    parts = module.split(".")
    return "__init__" if len(parts) == 1 else parts[1]


def _walk(node: ast.AST, into_functions: bool):
    yield node
    for child in ast.iter_child_nodes(node):
        if into_functions or not isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
            yield from _walk(child, into_functions)


def _imports(module: str, into_functions: bool = True) -> set[str]:
    """Every frepo module `module` imports, at the top or (with `into_functions`) inside functions."""
    path = MODULES[module]
    package = module if path.name == "__init__.py" else module.rsplit(".", 1)[0]
    found = set()
    for node in _walk(ast.parse(path.read_text()), into_functions):
        if isinstance(node, ast.ImportFrom):
            base = package.split(".")
            if node.level:
                base = base[: len(base) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if not target.startswith("frepo"):
                continue
            for alias in node.names:
                found.add(f"{target}.{alias.name}" if f"{target}.{alias.name}" in MODULES else target)
        elif isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith("frepo")}
    return found - {module}


def test_every_import_points_down_or_stays_in_its_room():
    assert set(map(_room, MODULES)) <= set(FLOOR), "a new room needs a floor in this test"
    upward = [
        f"{m} -> {t}"
        for m in MODULES
        for t in _imports(m)
        if _room(t) != _room(m) and FLOOR[_room(t)] >= FLOOR[_room(m)]
    ]
    assert not upward, upward


def test_no_import_cycles():
    graph = {m: _imports(m) for m in MODULES}
    state: dict[str, int] = {}

    def visit(m: str, trail: list[str]) -> None:
        state[m] = 1
        for t in graph[m]:
            assert state.get(t) != 1, " -> ".join([*trail, m, t])
            if t not in state:
                visit(t, [*trail, m])
        state[m] = 2

    for m in graph:
        if m not in state:
            visit(m, [])


def test_distillation_imports_no_file_format_of_other_tools():
    """The closure of what importing distill.py loads (its modules' top-level imports; a package's
    __init__ runs with it; frepo's own front door, which re-exports everything, aside) holds neither the
    foreign readers nor the exporters. Only `--init FILE` loads a reader, inside the function that reads it."""
    seen, todo = set(), ["frepo.jobs.distill"]
    while todo:
        m = todo.pop()
        if m in seen:
            continue
        seen.add(m)
        parents = [".".join(m.split(".")[:i]) for i in range(2, len(m.split(".")))]
        todo += [t for t in _imports(m, into_functions=False) | set(parents) if t in MODULES and t != "frepo"]
    assert "frepo.eval.run" in seen and "frepo.method.trainer" in seen  # the test sees real imports
    assert not seen & {
        "frepo.io.foreign",
        "frepo.io.foreign.registry",
        "frepo.io.foreign.readers",
        "frepo.io.foreign.files",
        "frepo.io.foreign.exports",
        "frepo.io.foreign.load",
        "frepo.io.export",
        "frepo.data.recipes",
        "frepo.jobs.evaluate",
    }


def test_the_tree_shows_the_floors():
    """Nothing lies loose at the top of the package: every module lives in a room, and every room is a
    folder the README's Architecture section names."""
    loose = sorted(p.name for p in SRC.glob("*.py") if p.stem not in ("__init__", "__main__"))
    assert not loose, loose
    rooms = {p.name for p in SRC.iterdir() if p.is_dir() and (p / "__init__.py").is_file()}
    assert rooms == set(FLOOR) - {"__init__", "__main__"}
    readme = (SRC.parents[1] / "README.md").read_text()
    architecture = readme[readme.index("## Architecture") :]
    assert all(f"`{room}/`" in architecture for room in rooms), rooms
