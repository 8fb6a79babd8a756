"""Fixtures for end-to-end tests: factories for private Unbound and Postfix instances.

Missing binaries skip the e2e tests locally, but fail them when ``CI=true``.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import pytest

from tests.support.milterproc import MilterProcess

from .harness import DnsServer, PostfixInstance, missing_binaries

POSTFIX_BINARIES = ("postfix", "postconf", "postqueue", "postcat", "postsuper", "smtp-sink")
UNBOUND_BINARIES = ("unbound", "unbound-checkconf")
OTHER_BINARIES = ("openssl",)

HOLD_HEADER = "X-Harness-Hold"


def require_binaries(names: Iterable[str]) -> None:
    """Skip (or fail under ``CI=true``) when any of ``names`` is not installed."""
    missing = missing_binaries(names)
    if not missing:
        return
    reason = f"e2e prerequisites not installed: {', '.join(missing)}"
    if os.environ.get("CI") == "true":
        pytest.fail(f"{reason} (CI=true, so this fails instead of skipping)", pytrace=False)
    pytest.skip(reason)


@pytest.fixture(scope="session")
def e2e_binaries() -> None:
    """Check for Postfix, Unbound and OpenSSL once per session."""
    require_binaries((*POSTFIX_BINARIES, *UNBOUND_BINARIES, *OTHER_BINARIES))


@pytest.fixture(scope="session")
def dns_server_factory(e2e_binaries: None) -> Iterator[Callable[..., DnsServer]]:
    """``make(records, timeout_names=..., refuse_names=...)`` -> a started DnsServer."""
    created: list[DnsServer] = []

    def make(records: Iterable[str] | str = (), **kwargs: Any) -> DnsServer:
        server = DnsServer(records, **kwargs)
        created.append(server)
        server.start()
        return server

    yield make
    for server in reversed(created):
        server.close()


@pytest.fixture(scope="session")
def postfix_factory(e2e_binaries: None) -> Iterator[Callable[..., PostfixInstance]]:
    """``make(milter="inet:127.0.0.1:PORT", ...)`` -> a started PostfixInstance."""
    created: list[PostfixInstance] = []

    def make(milter: str | None = None, **kwargs: Any) -> PostfixInstance:
        instance = PostfixInstance(milter, **kwargs)
        created.append(instance)
        instance.start()
        return instance

    yield make
    for instance in reversed(created):
        instance.close()


@pytest.fixture(scope="session")
def postfix_no_milter(postfix_factory: Callable[..., PostfixInstance]) -> PostfixInstance:
    """A Postfix without a milter; messages carrying ``X-Harness-Hold:`` go to the hold queue."""
    return postfix_factory(
        None,
        config_files={"header_checks": f"/^{HOLD_HEADER}:/ HOLD held by the test harness\n"},
        extra_main_cf={"header_checks": "regexp:$config_directory/header_checks"},
    )


@pytest.fixture(scope="module")
def postfix(postfix_factory: Callable[..., PostfixInstance],
            milter: MilterProcess) -> PostfixInstance:
    """A Postfix in front of the module's own ``milter`` fixture; tempfail if it is down."""
    return postfix_factory(milter.postfix_spec, milter_default_action="tempfail")
