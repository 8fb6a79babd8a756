"""Benchmark harness for issue 7: ``python -m bench --help`` (see bench/README.md)."""

from __future__ import annotations

from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
"""The repository root: the working directory of every Python child process we start."""
