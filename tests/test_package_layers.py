"""Packages import downward only: the layers of docs/architecture.md, checked on every import statement.

Lazy imports inside functions count too: a cycle hidden in a function is still a cycle. A new package must
be given its layer here (the test names it), so the picture in docs/architecture.md stays true.
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "instaseg"

# Lower layers first. A package may import packages of lower layers only (not of its own layer).
LAYERS: list[tuple[str, ...]] = [
    ("io",),
    ("structures",),
    ("ops",),
    ("data", "models", "baselines"),
    ("evaluation",),
    ("engine", "export"),
    ("inference",),
    ("serving", "active"),
    ("cli",),
]
LAYER_OF = {package: index for index, layer in enumerate(LAYERS) for package in layer}


def _imported_packages(path: Path) -> set[str]:
    """The instaseg subpackages that the module at `path` imports (absolute and relative imports)."""
    module_parts = path.relative_to(PACKAGE).with_suffix("").parts
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = module_parts[: len(module_parts) - node.level]
                names = [".".join(("instaseg", *base, *([node.module] if node.module else [])))]
            else:
                names = [node.module or ""]
        else:
            continue
        for name in names:
            parts = name.split(".")
            if parts[0] == "instaseg" and len(parts) > 1 and (PACKAGE / parts[1]).is_dir():
                found.add(parts[1])
    return found


def test_every_package_has_a_layer():
    packages = {p.name for p in PACKAGE.iterdir() if p.is_dir() and (p / "__init__.py").is_file()}
    assert packages - set(LAYER_OF) == set(), "give each new package its layer in LAYERS"


def test_packages_import_downward_only():
    upward = []
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(PACKAGE).parts
        if len(parts) < 2 or parts[0] not in LAYER_OF:
            continue  # top-level modules (instaseg/demo.py, __main__.py) sit above every package
        own = parts[0]
        for imported in _imported_packages(path):
            if imported != own and LAYER_OF.get(imported, len(LAYERS)) >= LAYER_OF[own]:
                upward.append(f"{path.relative_to(PACKAGE.parent)} imports instaseg.{imported}")
    assert upward == []
