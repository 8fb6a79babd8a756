"""The milter daemon as the end-to-end modules run it: one config shape, their own extras."""

from __future__ import annotations

from typing import Any

from tests.support.milterproc import MilterProcess

from .harness import DnsServer

AUTHSERV_ID = "mx.test.example"
# The policy tests match on this text (the default names the domain the same way).
REJECT_REPLY = "550 5.7.1 Rejected by the DMARC policy of {domain}: {failed}"


def milter_for(dns: DnsServer, *, deadline: str = "3s",
               policy: dict[str, Any] | None = None,
               sections: dict[str, dict[str, Any]] | None = None) -> MilterProcess:
    """A (not yet started) daemon asking ``dns``, with our authserv-id, ``[policy]`` extras and
    any other ``sections`` (e.g. ``{"reports": {"store": PATH}}``)."""
    config: dict[str, dict[str, Any]] = {
        "milter": {"authserv_id": AUTHSERV_ID, "message_deadline": deadline},
        "dns": {"nameservers": [dns.address], "timeout": "1s"},
    }
    if policy:
        config["policy"] = policy
    for name, table in (sections or {}).items():
        config.setdefault(name, {}).update(table)
    return MilterProcess(config)
