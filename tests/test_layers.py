"""The package's imports run one way (docs/ARCHITECTURE.md): read every module's imports with
`ast`, eager and lazy (inside functions) alike, and check that no module imports from a higher
layer and that no import cycle exists between modules."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PKG = Path(__file__).resolve().parents[1] / "src" / "mobilenetv2"

# Bottom to top. A unit is a top-level module or subpackage of `mobilenetv2`; a unit may import
# units of its own layer or below, never above. `mobilenetv2/__init__.py` (the public API
# facade) and `__main__` sit above everything and are imported by no module but the CLI.
LAYERS: tuple[tuple[str, ...], ...] = (
    ("errors", "config", "_optional", "_version", "_files"),
    ("model", "registry", "profile", "memory"),
    ("data",),
    ("weights",),
    ("export", "runtime"),
    ("evaluate", "tasks", "train", "quant"),
    ("predict", "segment", "detect", "benchmark", "deploy"),
    ("cli",),
    ("__init__", "__main__"),
)
RANK = {unit: i for i, layer in enumerate(LAYERS) for unit in layer}


def module_name(path: Path) -> str:
    parts = ("mobilenetv2", *path.relative_to(PKG).with_suffix("").parts)
    return ".".join(parts[:-1]) if parts[-1] == "__init__" else ".".join(parts)


MODULES = {module_name(p): p for p in sorted(PKG.rglob("*.py"))}


def unit(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def imports(module: str) -> set[str]:
    """Modules of the package this module imports, resolved to the module actually loaded:
    `from pkg import name` is the submodule `pkg.name` where one exists, else `pkg`."""
    path = MODULES[module]
    is_pkg = path.name == "__init__.py"
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = module.split(".")
                anchor = anchor if is_pkg else anchor[:-1]
                anchor = anchor[: len(anchor) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            names = [f"{base}.{a.name}" if f"{base}.{a.name}" in MODULES else base
                     for a in node.names]
        else:
            continue
        found.update(n for n in names if n.split(".")[0] == "mobilenetv2" and n in MODULES)
    found.discard(module)
    return found


GRAPH = {m: imports(m) for m in MODULES}


def test_every_unit_has_a_layer() -> None:
    missing = sorted({unit(m) for m in MODULES} - set(RANK))
    assert not missing, f"add these to LAYERS (and docs/ARCHITECTURE.md): {missing}"


@pytest.mark.parametrize("module", sorted(MODULES))
def test_no_import_from_a_higher_layer(module: str) -> None:
    here = unit(module)
    upward = sorted(t for t in GRAPH[module] if RANK.get(unit(t), -1) > RANK.get(here, -1))
    assert not upward, f"{module} (layer {RANK.get(here)}) imports from higher layers: {upward}"


def find_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    state: dict[str, int] = {}
    stack: list[str] = []
    cycles: list[list[str]] = []

    def visit(m: str) -> None:
        state[m] = 1
        stack.append(m)
        for t in sorted(graph.get(m, ())):
            if state.get(t) == 1:
                cycles.append(stack[stack.index(t):] + [t])
            elif t not in state:
                visit(t)
        stack.pop()
        state[m] = 2

    for m in sorted(graph):
        if m not in state:
            visit(m)
    return cycles


def test_no_import_cycles_between_modules() -> None:
    cycles = find_cycles(GRAPH)
    assert not cycles, "import cycles:\n" + "\n".join(" -> ".join(c) for c in cycles)


def test_no_import_cycles_between_units() -> None:
    """Units of one layer may import each other one way only (evaluate <- train, not both)."""
    units: dict[str, set[str]] = {}
    for m, targets in GRAPH.items():
        units.setdefault(unit(m), set()).update(unit(t) for t in targets if unit(t) != unit(m))
    cycles = find_cycles(units)
    assert not cycles, "import cycles between units:\n" + "\n".join(" -> ".join(c) for c in cycles)


LONG_FILE_LINES = 400
LONG_FILE_REASON = "Long because"


@pytest.mark.parametrize("module", sorted(MODULES))
def test_long_files_say_why(module: str) -> None:
    """One job per file: a module over ~400 lines says in its docstring why it stays whole."""
    path = MODULES[module]
    text = path.read_text()
    doc = ast.get_docstring(ast.parse(text)) or ""
    n = text.count("\n")
    assert n <= LONG_FILE_LINES or LONG_FILE_REASON in doc, (
        f"{path.relative_to(PKG)} has {n} lines: split it by job, or say in its docstring "
        f"'{LONG_FILE_REASON} ...'"
    )


def test_the_check_sees_imports() -> None:
    """The reader itself: a known eager import and a known lazy (in-function) one are found,
    so an empty graph cannot pass the tests above."""
    assert "mobilenetv2.model.arch" in GRAPH["mobilenetv2.model.backbone"]
    lazy = {t for m, ts in GRAPH.items() if m.startswith("mobilenetv2.cli") for t in ts}
    assert any(t.startswith("mobilenetv2.weights") for t in lazy)
