"""Where the shared conformance suites live, and what to do when they are missing.

The suites sit next to the repository in ``../shared/conformance`` (override with the
environment variable ``MAILSEC_CONFORMANCE_DIR``). A developer without them gets a skip; CI
(``CI=true``) gets a failure, so a missing checkout can never turn a conformance run green.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]


def conformance_dir() -> Path:
    configured = os.environ.get("MAILSEC_CONFORMANCE_DIR")
    if configured:
        return Path(configured)
    return REPO_ROOT.parent / "shared" / "conformance"


def in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() == "true"


def missing_suite(path: Path) -> None:
    """Skip (developer machine) or fail (CI) because a suite file is not there."""
    message = f"conformance suite not found: {path} (set MAILSEC_CONFORMANCE_DIR)"
    if in_ci():
        pytest.fail(message)
    pytest.skip(message)
