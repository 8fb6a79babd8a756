"""The bypass classes of issue 12 (forged mail accepted), one case per class and its control.

Shared by the offline test (``mailsec-milter check``, tests/unit/test_forgery_classes.py) and
the daemon test over the milter protocol (tests/adapter/test_forgery_daemon.py), so both
paths are held to the same verdicts. Each forged case claims a ``p=reject`` domain from a
host the domain does not authorise; its control is the one-change variant that was handled
before the fix (so a test that cannot tell them apart fails one of the two).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

FORGER_IP = "198.51.100.66"
VICTIM_IP = "192.0.2.10"

# p=reject victims, the attacker's look-alike registrations (IDNA2003 would map the victim's
# name onto them) and eleven throw-away domains without a DMARC record.
ZONE: tuple[tuple[str, str, str], ...] = (
    ("victim.example", "TXT", "v=spf1 ip4:192.0.2.0/24 -all"),
    ("_dmarc.victim.example", "TXT", "v=DMARC1; p=reject"),
    ("attacker.example", "TXT", "v=spf1 ip4:198.51.100.0/24 -all"),
    # fußball.example (ß is PVALID in IDNA2008) and the attacker's fussball.example
    ("xn--fuball-cta.example", "TXT", "v=spf1 ip4:192.0.2.0/24 -all"),
    ("_dmarc.xn--fuball-cta.example", "TXT", "v=DMARC1; p=reject"),
    ("fussball.example", "TXT", "v=spf1 ip4:198.51.100.0/24 -all"),
    ("_dmarc.fussball.example", "TXT", "v=DMARC1; p=none"),
    # σίσυφος.example (final sigma) and the attacker's σίσυφοσ.example
    ("xn--kxa6ajbbmh.example", "TXT", "v=spf1 ip4:192.0.2.0/24 -all"),
    ("_dmarc.xn--kxa6ajbbmh.example", "TXT", "v=DMARC1; p=reject"),
    ("xn--kxa6akbbkh.example", "TXT", "v=spf1 ip4:198.51.100.0/24 -all"),
    ("_dmarc.xn--kxa6akbbkh.example", "TXT", "v=DMARC1; p=none"),
    *((f"t{n}.example", "TXT", "v=spf1 -all") for n in range(11)),
)


def zone_text() -> str:
    """The zone in the ``check --zone`` format."""
    return "".join(f'{name}. {rdtype} "{value}"\n' for name, rdtype, value in ZONE)


@dataclass(frozen=True)
class Case:
    """One message: its From header values (None: no From at all), the envelope, extra
    configuration, and the verdict (action, reason) it must get."""

    id: str
    from_values: tuple[str, ...] | None
    action: str
    reason: str
    mail_from: str = "x@attacker.example"
    client_ip: str = FORGER_IP
    config: dict[str, dict[str, Any]] = field(default_factory=dict)
    header_from: str | None = None  # the DMARC header.from the offline check must report

    def message(self) -> bytes:
        froms = "".join(f"From: {v}\r\n" for v in self.from_values or ())
        return (f"{froms}To: bob@example.net\r\nSubject: wire the money\r\n"
                f"Message-ID: <{self.id}@test.example>\r\n\r\nPay it today.\r\n").encode()


def _throwaways(count: int) -> str:
    return ", ".join(f"x{n}@t{n}.example" for n in range(count))


CASES: tuple[Case, ...] = (
    # 1. IDNA2008, not IDNA2003
    Case("idna-eszett-forged", ("CEO <ceo@fußball.example>",), "reject", "dmarc_policy",
         mail_from="x@fussball.example", header_from="xn--fuball-cta.example"),
    Case("idna-eszett-control-ascii", ("CEO <ceo@fussball.example>",), "accept", "dmarc_pass",
         mail_from="x@fussball.example", header_from="fussball.example"),
    Case("idna-final-sigma-forged", ("CEO <ceo@σίσυφος.example>",), "reject", "dmarc_policy",
         mail_from="x@σίσυφοσ.example", header_from="xn--kxa6ajbbmh.example"),
    Case("idna-smtputf8-sender-passes", ("CEO <ceo@fußball.example>",), "accept", "dmarc_pass",
         mail_from="ceo@fußball.example", client_ip=VICTIM_IP,
         header_from="xn--fuball-cta.example"),
    Case("idna-override-keyed-by-a-label", ("CEO <ceo@fußball.example>",), "quarantine",
         "local_override", mail_from="x@fussball.example",
         config={"policy": {"domain_overrides": {"fußball.example": "never_reject"}}}),
    # 2. more author domains than are evaluated
    Case("cap-victim-eleventh", (f"{_throwaways(10)}, CEO <ceo@victim.example>",), "reject",
         "unusable_from"),
    Case("cap-control-victim-tenth", (f"{_throwaways(9)}, CEO <ceo@victim.example>",),
         "reject", "dmarc_policy", header_from="victim.example"),
    Case("cap-eleven-without-policy", (_throwaways(11),), "reject", "unusable_from"),
    # 3. malformed From hiding the author; a From with nothing to read
    Case("malformed-open-literal", ("[ CEO <ceo@victim.example>",), "reject", "dmarc_policy",
         header_from="victim.example"),
    Case("malformed-control", ("CEO <ceo@victim.example>",), "reject", "dmarc_policy",
         header_from="victim.example"),
    Case("malformed-open-quote", ('"CEO <ceo@victim.example>',), "reject", "dmarc_policy"),
    Case("malformed-encoded-word-local-part",
         ("=?utf-8?q?ceo=40victim.example?= x@attacker.example",), "reject", "dmarc_policy"),
    Case("unusable-nothing-to-read", ("Undisclosed sender",), "quarantine", "unusable_from"),
    Case("unusable-no-from", None, "quarantine", "unusable_from"),
    Case("unusable-reject-configured", ("Undisclosed sender",), "reject", "unusable_from",
         config={"policy": {"unusable_from": "reject"}}),
    Case("unusable-accept-configured", ("Undisclosed sender",), "accept", "no_policy",
         config={"policy": {"unusable_from": "accept"}}),
    # 4. SPF evaluates the domain after the LAST "@" of the envelope sender
    Case("spf-quoted-at-forged", ("ceo@attacker.example",), "reject", "spf_fail",
         mail_from='"x@attacker.example"@victim.example',
         config={"policy": {"reject_on_spf_fail": True}}),
    Case("spf-quoted-at-control", ("ceo@attacker.example",), "reject", "spf_fail",
         mail_from="x@victim.example", config={"policy": {"reject_on_spf_fail": True}}),
    Case("spf-quoted-at-honest", ("ceo@victim.example",), "accept", "dmarc_pass",
         mail_from='"a@b"@victim.example', client_ip=VICTIM_IP, header_from="victim.example"),
    # 5. what the reader sees: invisible code points, other full stops, a quoted address
    Case("visible-invisible-times", ("ceo@vic\u2062tim.example",), "reject", "dmarc_policy",
         header_from="victim.example"),
    Case("visible-hangul-filler", ("CEO <ceo@vic\u3164tim.example>",), "reject",
         "dmarc_policy", header_from="victim.example"),
    Case("visible-variation-selector", ("ceo@victim\ufe0f.example",), "reject",
         "dmarc_policy", header_from="victim.example"),
    Case("visible-zero-width-joiner", ("ceo@vic\u200dtim.example",), "reject", "dmarc_policy",
         header_from="victim.example"),
    Case("visible-no-break-space", ("ceo@victim.example\u00a0",), "reject", "dmarc_policy",
         header_from="victim.example"),
    Case("visible-fullwidth-stop", ("ceo@victim\uff0eexample",), "reject", "dmarc_policy",
         header_from="victim.example"),
    Case("visible-ideographic-stop-at-end", ("ceo@victim.example\u3002",), "reject",
         "dmarc_policy", header_from="victim.example"),
    Case("visible-halfwidth-ideographic-stop", ("ceo@victim\uff61example",), "reject",
         "dmarc_policy", header_from="victim.example"),
    Case("visible-quoted-string-only", ('"ceo@victim.example"',), "reject", "dmarc_policy",
         header_from="victim.example"),
)

# A second From field a lenient reader takes for one (white space before the colon, RFC 5322
# §4.5.3 obs-optional; any case), beside the attacker's own aligned From: (header block, verdict).
FIELD_NAME_CASES: tuple[tuple[str, str, str], ...] = (
    ("from-with-space-before-colon",
     "From: x@attacker.example\r\nFrom : CEO <ceo@victim.example>\r\n", "reject"),
    ("from-uppercase", "From: x@attacker.example\r\nFROM: CEO <ceo@victim.example>\r\n",
     "reject"),
    ("from-control-attacker-only", "From: x@attacker.example\r\n", "accept"),
)
