"""Imports run one way: the methods (``curvenet``, ``baselines``) import the harness (``curvebench``),
never the reverse; the harness reaches them only through the module list in ``curvebench/methods.py``
and the plugins' entry points, and ``leaderboard`` reads records, not method code (docs/ARCHITECTURE.md)."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
METHOD_PACKAGES = {"curvenet", "baselines"}


def imported_packages(path: Path) -> set[tuple[str, int]]:
    """(top-level package, line) of every import statement in ``path``, nested ones included."""
    out: set[tuple[str, int]] = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            out |= {(a.name.split(".")[0], node.lineno) for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            out.add((node.module.split(".")[0], node.lineno))
    return out


def violations(packages: tuple[str, ...], forbidden: set[str], root: Path = ROOT) -> list[str]:
    return [f"{p.relative_to(root)}:{line} imports {pkg}" for package in packages
            for p in sorted((root / package).rglob("*.py")) for pkg, line in sorted(imported_packages(p), key=lambda x: x[1]) if pkg in forbidden]


def test_the_harness_and_the_leaderboard_import_no_method_package():
    assert violations(("curvebench", "leaderboard"), METHOD_PACKAGES) == []


def test_the_methods_import_no_other_method_package_than_their_own():
    assert violations(("curvenet",), {"baselines", "leaderboard"}) == []
    assert violations(("baselines",), {"curvenet", "leaderboard"}) == []


def test_the_layering_check_sees_nested_imports(tmp_path):
    (tmp_path / "curvebench").mkdir()
    (tmp_path / "curvebench" / "m.py").write_text("def f():\n    from curvenet.probe import x\n    import baselines\n")
    assert violations(("curvebench",), METHOD_PACKAGES, tmp_path) == [
        "curvebench/m.py:2 imports curvenet", "curvebench/m.py:3 imports baselines"]
