"""The layering docs/DESIGN.md draws, where it can be checked from the imports: the one A-R
renderer depends on the model (and the engine's and policy's results), never on the checks'
own modules (issue 13)."""

from __future__ import annotations

import ast
from pathlib import Path

import mailsec_milter

PACKAGE = Path(mailsec_milter.__file__).resolve().parent


def imported_modules(path: Path) -> set[str]:
    """Every module ``path`` imports, as absolute dotted names."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = "mailsec_milter" + ("." + node.module if node.module else "")
                found.update({base} | {f"{base}.{a.name}" for a in node.names}
                             if node.module is None else {base})
            elif node.module:
                found.add(node.module)
    return found


def test_the_renderer_does_not_import_the_checks() -> None:
    imports = imported_modules(PACKAGE / "authres.py")
    assert "mailsec_milter.model" in imports
    assert not {name for name in imports if name.startswith("mailsec_milter.checks")}, imports


def test_spf_identity_is_the_models_and_still_importable_from_the_spf_check() -> None:
    from mailsec_milter.checks.spf import SpfIdentity as FromCheck
    from mailsec_milter.model import SpfIdentity

    assert FromCheck is SpfIdentity
