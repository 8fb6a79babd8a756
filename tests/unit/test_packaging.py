"""What the installed product contains: the daemon's packages only, no test or bench helpers.

The package list is computed the way setuptools computes it from pyproject.toml's
``[tool.setuptools.packages.find]``, so a helper moved back under ``mailsec_milter/`` fails here.
"""

from __future__ import annotations

import ast
import tomllib
from pathlib import Path

from setuptools import find_packages

REPO = Path(__file__).resolve().parents[2]


def _pyproject() -> dict[str, object]:
    with (REPO / "pyproject.toml").open("rb") as fh:
        return tomllib.load(fh)


def _shipped_packages() -> list[str]:
    tool = _pyproject()["tool"]
    assert isinstance(tool, dict)
    include = tool["setuptools"]["packages"]["find"]["include"]
    return sorted(find_packages(where=str(REPO), include=include))


def _imported_modules(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


def test_only_daemon_packages_are_shipped() -> None:
    packages = _shipped_packages()
    assert "mailsec_milter" in packages
    assert all(p == "mailsec_milter" or p.startswith("mailsec_milter.") for p in packages)
    # the milter protocol client (the MTA side) is a test and bench helper, not product code
    assert not any(p.split(".")[-1] == "testing" for p in packages), packages
    shipped_files = [
        f for p in packages for f in (REPO / p.replace(".", "/")).glob("*.py")
    ]
    assert not any(f.name == "milterclient.py" for f in shipped_files)


def test_shipped_modules_import_no_test_or_bench_code() -> None:
    """An installed package has no ``tests``/``bench``: importing them would fail for users."""
    for package in _shipped_packages():
        for module in (REPO / package.replace(".", "/")).glob("*.py"):
            offending = {
                m for m in _imported_modules(module) if m.split(".")[0] in {"tests", "bench"}
            }
            assert not offending, f"{module.relative_to(REPO)} imports {sorted(offending)}"


def test_milter_client_stays_type_checked() -> None:
    tool = _pyproject()["tool"]
    assert isinstance(tool, dict)
    files = tool["mypy"]["files"]
    assert "tests/support/milterclient.py" in files
    assert (REPO / "tests/support/milterclient.py").is_file()
