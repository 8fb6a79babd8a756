"""Fixtures for the report store: the same tests run on SQLite and on a REAL private PostgreSQL
(tests/support/pgserver.py). Missing PostgreSQL binaries skip locally and fail under CI=true."""

from __future__ import annotations

import itertools
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from mailsec_milter.reports.store import ReportStore, open_store
from tests.support.pgserver import PostgresServer, postgres_bin

_DATABASES = itertools.count()


@pytest.fixture(scope="session")
def postgres() -> Iterator[PostgresServer]:
    if postgres_bin() is None:
        reason = "PostgreSQL server binaries not installed (scripts/install-deps.sh --test)"
        if os.environ.get("CI") == "true":
            pytest.fail(reason + " (CI=true, so this fails instead of skipping)", pytrace=False)
        pytest.skip(reason)
    with PostgresServer() as server:
        yield server


@pytest.fixture(params=["sqlite", "postgresql"])
def store_location(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A fresh, empty store location of each backend."""
    if request.param == "sqlite":
        return str(tmp_path / "reports.sqlite")
    server: PostgresServer = request.getfixturevalue("postgres")
    name = f"t{next(_DATABASES)}"
    server.psql(f"CREATE DATABASE {name} OWNER mailsec")
    return server.url.rsplit("/", 1)[0] + "/" + name


@pytest.fixture
def store(store_location: str) -> Iterator[ReportStore]:
    opened = open_store(store_location)
    yield opened
    opened.close()
