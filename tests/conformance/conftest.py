"""Fixtures for the conformance suites under ``../shared/conformance``."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.support.conformance import conformance_dir


@pytest.fixture(scope="session")
def conformance_root() -> Path:
    """The conformance directory (it may be missing; tests decide to skip or fail)."""
    return conformance_dir()
