"""Hostile messages through the pure pipeline: parse_message → Engine.analyse → policy.decide →
authres.render, over a StaticResolver zone (no network, no daemon).

Every case must get a defined result (no check crashes: ``Analysis.errors`` stays empty, the
verdict is one of ours, the rendered header is well formed: ``fuzz.targets.assert_well_formed_ar``),
in bounded time (a pytest timeout per test, never a wall-clock assertion) and bounded memory
(``tracemalloc`` peak of the whole pipeline run). Where a result is fixed by an RFC or by the
security write-up the case comes from, it is asserted.

Inputs: the OpenDMARC security write-ups (../shared/conformance/dmarc/opendmarc/SECURITY/), the
OpenDKIM miltertest scenarios (dkim/opendkim-miltertest/*.conf; the snapshot carries the
configurations and the key file, not the Lua scripts, so the messages are rebuilt from what
each configuration tests), the whole Mail::DKIM corpus with its FAKE_DNS.dat, and our own
lists below.
"""

from __future__ import annotations

import base64
import csv
import hashlib
import tracemalloc
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path

import pytest
from dkim.canonicalization import CanonicalizationPolicy

from mailsec_milter import authres
from mailsec_milter.checks.dkim import MAX_RSA_BITS
from mailsec_milter.checks.spf import SpfIdentity, check_spf
from mailsec_milter.config import Settings, settings_from_mapping
from mailsec_milter.dns import Deadline, DnsResult, StaticResolver
from mailsec_milter.engine import Analysis, Engine
from mailsec_milter.model import AuthResult, Envelope, MessageSnapshot, TlsInfo, parse_message
from mailsec_milter.policy import Action, Verdict, decide
from tests.support import dkimkeys
from tests.support.arshape import assert_well_formed_ar
from tests.support.conformance import conformance_dir, missing_suite

pytestmark = pytest.mark.timeout(60)

AUTHSERV_ID = "mx.test.example"
ED = dkimkeys.ed25519_key(b"\x11" * 32)
SENDER_IP = "192.0.2.10"
ATTACKER_IP = "203.0.113.5"

ZONE = f"""
sender.example.                 TXT "v=spf1 ip4:192.0.2.0/24 -all"
_dmarc.sender.example.          TXT "v=DMARC1; p=reject"
victim.example.                 TXT "v=spf1 ip4:198.51.100.0/24 -all"
_dmarc.victim.example.          TXT "v=DMARC1; p=reject"
mx.victim.example.              TXT "v=spf1 ip4:203.0.113.0/24 -all"
attacker.example.               TXT "v=spf1 ip4:203.0.113.0/24 -all"
_dmarc.attacker.example.        TXT "v=DMARC1; p=none"
_dmarc.xn--bcher-kva.example.   TXT "v=DMARC1; p=reject"
_dmarc.nul.example.             TXT "v=DMARC1; p=reject\\000; rua=mailto:a@b.example"
_dmarc.slow.example.            TXT TIMEOUT
{dkimkeys.zone_line("ed._domainkey.sender.example", ED.record())}
{dkimkeys.zone_line("ed._domainkey.attacker.example", ED.record())}
"""

SETTINGS = settings_from_mapping({"milter": {"authserv_id": AUTHSERV_ID}})
ACTIONS = frozenset(Action)
NOT_PASS = frozenset(AuthResult) - {AuthResult.PASS}


@pytest.fixture(scope="module")
def pool() -> Iterator[ThreadPoolExecutor]:
    with ThreadPoolExecutor(max_workers=4, thread_name_prefix="hostile") as executor:
        yield executor


@dataclass(frozen=True)
class Run:
    analysis: Analysis
    verdict: Verdict
    header: str
    queries: tuple[tuple[str, str], ...]
    peak_mb: float


def envelope(mail_from: str = "a@sender.example", ip: str = SENDER_IP,
             helo: str = "mail.sender.example", tls: TlsInfo | None = None) -> Envelope:
    return Envelope(client_ip=ip, helo=helo, mail_from=mail_from, rcpt_to=("b@rcpt.example",),
                    tls=tls or TlsInfo())


def run(pool: ThreadPoolExecutor, raw: bytes, env: Envelope | None = None, *,
        zone: str = ZONE, settings: Settings = SETTINGS, memory_mb: float = 32) -> Run:
    """The whole pure pipeline under tracemalloc; asserts the properties every case shares."""
    resolver = StaticResolver.from_zone_text(zone)
    engine = Engine(settings, resolver, pool)
    tracemalloc.start()
    try:
        headers, body = parse_message(raw)
        snapshot = MessageSnapshot(env or envelope(), headers, body)
        analysis = engine.analyse(snapshot)
        verdict = decide(analysis, snapshot.envelope, settings)
        results = authres.results_for(analysis, verdict)
        header = authres.render(settings.authserv_id, results)
        authres.forged_indices(snapshot.headers, settings.authserv_id, False)
        peak = tracemalloc.get_traced_memory()[1] / 2**20
    finally:
        tracemalloc.stop()
    assert not analysis.errors, analysis.errors  # no check crashed
    assert verdict.action in ACTIONS
    assert_well_formed_ar(header, len(results))
    assert peak < memory_mb, f"pipeline peak {peak:.1f} MiB"
    return Run(analysis, verdict, header, tuple(resolver.queries), peak)


def message(from_value: str = "Alice <a@sender.example>", extra: bytes = b"",
            body: bytes = b"Hello.\r\n") -> bytes:
    return (extra + f"From: {from_value}\r\nTo: b@rcpt.example\r\nSubject: test\r\n"
            f"Message-ID: <1@sender.example>\r\n\r\n".encode("utf-8", "surrogateescape") + body)


def signed(raw: bytes, domain: str = "sender.example", **kwargs: object) -> bytes:
    return dkimkeys.sign(raw, ED, "ed", domain, **kwargs)  # type: ignore[arg-type]


def writeup(name: str) -> Path:
    path = conformance_dir() / "dmarc" / "opendmarc" / "SECURITY" / name
    if not path.is_file():
        missing_suite(path)
    return path


def test_the_baseline_passes(pool: ThreadPoolExecutor) -> None:
    result = run(pool, signed(message()))
    assert result.analysis.dmarc is not None and result.analysis.dmarc.result is AuthResult.PASS
    assert "dkim=pass" in result.header and result.verdict.action is Action.ACCEPT


# --- OpenDMARC security write-ups -------------------------------------------------------------


@pytest.mark.parametrize("from_value", [
    "a@sender.example, b@victim.example",
    "b@victim.example, a@sender.example",
    "a@sender.example, b@victim.example, c@attacker.example",
    "list: a@sender.example, b@victim.example;",
])
def test_cve_2019_16378_several_authors_strictest_wins(pool: ThreadPoolExecutor,
                                                       from_value: str) -> None:
    writeup("CVE-2019-16378")
    result = run(pool, signed(message(from_value)))
    assert result.analysis.dmarc is not None
    assert result.analysis.dmarc.result is AuthResult.FAIL
    assert result.verdict.action is Action.REJECT


def test_cve_2019_16378_same_domain_twice_is_one_author_domain(pool: ThreadPoolExecutor) -> None:
    writeup("CVE-2019-16378")
    result = run(pool, signed(message("prof@sender.example, student@sender.example")))
    assert result.analysis.dmarc is not None and result.analysis.dmarc.result is AuthResult.PASS


def test_cve_2019_16378_author_domains_are_bounded(pool: ThreadPoolExecutor) -> None:
    """The write-up's amplification concern: 500 author domains cost at most
    max_author_domains DMARC discoveries, and the outcome can never be pass."""
    writeup("CVE-2019-16378")
    authors = ", ".join(f"u@d{n}.example" for n in range(500))
    result = run(pool, signed(message(f"a@sender.example, {authors}")))
    assert result.analysis.dmarc is not None
    assert result.analysis.dmarc.result is not AuthResult.PASS
    dmarc_queries = [q for q in result.queries if q[0].startswith("_dmarc.")]
    assert len(dmarc_queries) <= 10 * 8  # max_author_domains times the tree walk


MALFORMED_LISTS = [
    "a@sender.example,,, <b@victim.example",
    "<a@sender.example, b@victim.example",
    "a@sender.example, (unterminated b@victim.example",
    "a@sender.example, \"unterminated b@victim.example",
    "a@sender.example; b@victim.example",
    "a@sender.example: b@victim.example",
    "<<<a@sender.example>>>, b@victim.example",
    "a@sender.example, b@victim.example@",
    "a@sender.example, @victim.example",
    "a@sender.example b@victim.example",
    ", , ,",
    ":;",
    "a@sender.example, <>",
    "a@sender.example,\x00b@victim.example",
    "=?utf-8?q?a@sender.example?= <b@victim.example>",
]


@pytest.mark.parametrize("from_value", MALFORMED_LISTS)
def test_cve_2021_34555_malformed_multi_valued_from(pool: ThreadPoolExecutor,
                                                    from_value: str) -> None:
    """A malformed From list crashed OpenDMARC 1.4.1. Ours: a defined result; where the victim
    address can be read it is evaluated and fails; nothing malformed passes."""
    writeup("CVE-2021-34555")
    result = run(pool, signed(message(from_value)))
    dmarc = result.analysis.dmarc
    assert dmarc is not None and dmarc.result is not AuthResult.PASS
    if "victim.example" in from_value:
        assert dmarc.result is AuthResult.FAIL and result.verdict.action is Action.REJECT


def test_cve_2020_12272_comment_never_extends_a_domain(pool: ThreadPoolExecutor) -> None:
    writeup("CVE-2020-12272")
    # the From domain with a comment glued on (and never closed)
    result = run(pool, signed(message("a@victim.example(.sender.example")))
    assert result.analysis.dmarc is not None
    assert result.analysis.dmarc.result is AuthResult.FAIL
    assert result.verdict.action is Action.REJECT
    # a DKIM d= and an envelope domain of that shape never align with anything
    raw = dkimkeys.sign_with_tags(
        message("a@victim.example"), ED,
        [("v", "1"), ("a", "ed25519-sha256"), ("d", "attacker.example(.victim.example"),
         ("s", "ed")], ["from", "to", "subject"])
    result = run(pool, raw, envelope("x@attacker.example(.victim.example", ATTACKER_IP))
    assert result.analysis.dmarc is not None
    assert result.analysis.dmarc.result is AuthResult.FAIL
    assert all(s.result is not AuthResult.PASS for s in result.analysis.dkim.signatures)
    assert result.verdict.action is Action.REJECT


def test_cve_2019_20790_helo_pass_and_forged_results_are_not_mail_from(
        pool: ThreadPoolExecutor) -> None:
    """A HELO that passes SPF, a forged Received-SPF and a forged A-R with our id: DMARC uses
    only our own SPF result for MAIL FROM; the forged A-R is found for deletion."""
    writeup("CVE-2019-20790")
    forged = (b"Authentication-Results: mx.test.example; spf=pass smtp.mailfrom=victim.example\r\n"
              b"Received-SPF: pass (mx.test.example: domain of a@victim.example designates "
              b"203.0.113.5 as permitted sender) identity=mailfrom; "
              b"envelope-from=a@victim.example\r\n")
    raw = message("a@victim.example", extra=forged)
    result = run(pool, raw, envelope("a@victim.example", ATTACKER_IP, helo="mx.victim.example"))
    analysis = result.analysis
    assert analysis.spf_helo is not None and analysis.spf_helo.result is AuthResult.PASS
    assert analysis.spf_mailfrom.result is AuthResult.FAIL
    assert analysis.dmarc is not None and analysis.dmarc.result is AuthResult.FAIL
    assert result.verdict.action is Action.REJECT
    headers, _ = parse_message(raw)
    assert authres.forged_indices(headers, AUTHSERV_ID, False) == [1]


def test_cve_2020_12460_record_bytes_that_broke_a_c_parser(pool: ThreadPoolExecutor) -> None:
    """The overflow was in aggregate-report XML, which we never parse; the nearest input we do
    parse, a DMARC record carrying a NUL and unterminated text, gets a defined result."""
    writeup("CVE-2020-12460")
    zone = ZONE + '_dmarc.nul2.example. TXT "v=DMARC1; p=reject; rua=mailto:\\000\\255\\255"\n'
    for domain in ("nul.example", "nul2.example"):
        result = run(pool, message(f"a@{domain}"), envelope(f"a@{domain}", ATTACKER_IP),
                     zone=zone)
        dmarc = result.analysis.dmarc
        assert dmarc is not None and dmarc.result in (AuthResult.FAIL, AuthResult.PERMERROR)


# --- OpenDKIM miltertest scenarios -------------------------------------------------------------

OPENDKIM = "dkim/opendkim-miltertest"


def opendkim(conf: str) -> Path:
    path = conformance_dir() / OPENDKIM / conf
    if not path.is_file():
        missing_suite(path)
    return path


def opendkim_zone() -> str:
    """The scenario key file (``pubkeys``: ``name<TAB>record``) as StaticResolver zone text."""
    lines = []
    for line in opendkim("pubkeys").read_text().splitlines():
        name, _, record = line.strip().partition(" ") if " " in line.strip().split("\t")[0] \
            else line.strip().partition("\t")
        if name:
            lines.append(dkimkeys.zone_line(name.strip(), record.strip()))
    return ZONE + "\n".join(lines) + "\n"


def test_opendkim_double_from(pool: ThreadPoolExecutor) -> None:
    """t-verify-double-from: a second From above a signed one; the signature still verifies
    over the bottom field (RFC 6376 §5.4), DMARC sees both authors and fails the victim."""
    opendkim("t-verify-double-from.conf")
    raw = b"From: ceo@victim.example\r\n" + signed(message())
    result = run(pool, raw)
    assert result.analysis.dmarc is not None
    assert result.analysis.dmarc.result is AuthResult.FAIL
    assert result.verdict.action is Action.REJECT


@pytest.mark.parametrize("from_value", ["", "<", "\"", "(", "@", "a@", "@@@", "<a@>", "a@.",
                                        "a@sender..example", "a@-sender.example"])
def test_opendkim_malformed_from(pool: ThreadPoolExecutor, from_value: str) -> None:
    opendkim("t-verify-malformed.conf")
    result = run(pool, signed(message(from_value)))
    assert result.analysis.dmarc is not None
    assert result.analysis.dmarc.result in (AuthResult.PERMERROR, AuthResult.FAIL,
                                            AuthResult.NONE)


def test_control_characters_in_the_local_part_keep_the_domain(pool: ThreadPoolExecutor) -> None:
    """Not RFC 5322 atext, but the domain is unambiguous: it is the author domain."""
    result = run(pool, signed(message("\x7f\x01@sender.example")))
    assert result.analysis.dmarc is not None
    assert result.analysis.dmarc.header_from == "sender.example"


def test_opendkim_revoked_key(pool: ThreadPoolExecutor) -> None:
    """t-verify-revoked, with the scenario's own key file: ``revoked._domainkey.example.com``
    publishes ``p=`` (empty)."""
    opendkim("t-verify-revoked.conf")
    raw = dkimkeys.sign(message("a@example.com"), ED, "revoked", "example.com")
    result = run(pool, raw, zone=opendkim_zone())
    (signature,) = result.analysis.dkim.signatures
    assert signature.result is AuthResult.PERMERROR and "revoked" in signature.comment


def test_opendkim_oversized_authentication_results(pool: ThreadPoolExecutor) -> None:
    """t-verify-ss-ar-bad: an oversized A-R (here 60 KB, one libmilter packet) claiming our id."""
    opendkim("t-verify-ss-ar-bad.conf")
    value = "mx.test.example; " + "; ".join(f"dkim=pass header.d=d{n}.example"
                                            for n in range(2500))
    raw = signed(message(extra=f"Authentication-Results: {value[:60000]}\r\n".encode()))
    result = run(pool, raw)
    assert "dkim=pass" in result.header
    headers, _ = parse_message(raw)
    assert authres.forged_indices(headers, AUTHSERV_ID, False) == [1]


def test_opendkim_simple_simple_body_modified(pool: ThreadPoolExecutor) -> None:
    opendkim("t-verify-ss-bad.conf")
    raw = signed(message(), canonicalize=(b"simple", b"simple")).replace(b"Hello.", b"Hellx.")
    (signature,) = run(pool, raw).analysis.dkim.signatures
    assert signature.result is AuthResult.FAIL


def test_opendkim_signature_syntax_error(pool: ThreadPoolExecutor) -> None:
    opendkim("t-verify-syntax.conf")
    raw = message(extra=b"DKIM-Signature: v=1; a=rsa-sha256; d=sender.example; s=ed; "
                        b"this is not a tag list; b=\r\n")
    (signature,) = run(pool, raw).analysis.dkim.signatures
    assert signature.result is AuthResult.PERMERROR


def test_opendkim_unsigned(pool: ThreadPoolExecutor) -> None:
    opendkim("t-verify-unsigned.conf")
    result = run(pool, message())
    assert result.analysis.dkim.signatures == ()
    assert "dkim=none" in result.header


def test_opendkim_header_fields_reported(pool: ThreadPoolExecutor) -> None:
    """t-verify-ss-header-fields: the result carries header.d, header.s and header.b."""
    opendkim("t-verify-ss-header-fields.conf")
    opendkim("t-verify-ss.conf")
    header = run(pool, signed(message(), canonicalize=(b"simple", b"simple"))).header
    unfolded = header.replace("\n", "")
    for part in ("dkim=pass", "header.d=sender.example", "header.s=ed", "header.b="):
        assert part in unfolded


# --- From headers: several, lists, unicode and IDN, invalid UTF-8 ------------------------------


def test_multiple_from_headers(pool: ThreadPoolExecutor) -> None:
    raw = signed(message(extra=b"From: b@victim.example\r\n"))
    result = run(pool, raw)
    dmarc = result.analysis.dmarc
    assert dmarc is not None and dmarc.result is AuthResult.FAIL
    assert result.verdict.action is Action.REJECT


def test_a_thousand_from_headers(pool: ThreadPoolExecutor) -> None:
    extra = b"".join(b"From: u@d%d.example\r\n" % n for n in range(1000))
    result = run(pool, signed(message(extra=extra)))
    dmarc = result.analysis.dmarc
    assert dmarc is not None and dmarc.result is not AuthResult.PASS
    assert len([q for q in result.queries if q[0].startswith("_dmarc.")]) <= 10 * 8


@pytest.mark.parametrize(("from_value", "author"), [
    ("a@bücher.example", "xn--bcher-kva.example"),  # U-label → A-label, policy found
    ("a@BÜCHER.example", "xn--bcher-kva.example"),
    ("a@victim\u3002example", "victim.example"),  # ideographic full stop is a label dot
    ("a@\uff56\uff49\uff43\uff54\uff49\uff4d.example", "victim.example"),  # fullwidth letters
    ("a@xn--bcher-kva.example.", "xn--bcher-kva.example"),
])
def test_idn_authors_find_their_policy(pool: ThreadPoolExecutor, from_value: str,
                                       author: str) -> None:
    """An author domain written in Unicode is the same domain as its A-label: the policy of
    the A-label applies (IDNA, RFC 9989 §5.3.1), so Unicode spelling is no way around p=reject."""
    result = run(pool, message(from_value), envelope("x@attacker.example", ATTACKER_IP))
    dmarc = result.analysis.dmarc
    assert dmarc is not None and dmarc.header_from == author
    assert dmarc.result is AuthResult.FAIL and result.verdict.action is Action.REJECT


@pytest.mark.parametrize("from_value", [
    "a@xn--.example", "a@xn--zz.example", "a@\u200b.example", "a@\U0001f4a9.example",
    "a@e\u0301xample.example", "a@" + "\u00e9" * 70 + ".example", "üser@sender.example",
    "\"Zoë\" <zoë@sender.example>", "a@ex\u00adample.example", "a@\udcff.example",
])
def test_unicode_and_invalid_idn_authors(pool: ThreadPoolExecutor, from_value: str) -> None:
    result = run(pool, signed(message(from_value)))
    assert result.analysis.dmarc is not None  # a defined result is all we ask


def test_invalid_utf8_in_headers_and_body_keeps_a_valid_signature(
        pool: ThreadPoolExecutor) -> None:
    """DKIM works on bytes: undecodable bytes in signed headers and the body still verify."""
    raw = (b"From: \"\xff\xfe Alice\" <a@sender.example>\r\nTo: b@rcpt.example\r\n"
           b"Subject: \x80\x81 caf\xe9 \xc3\x28\r\n\r\nbody \xff\xfe\xfd\r\n\x00\x01 nul\r\n")
    result = run(pool, signed(raw, include_headers=["from", "to", "subject"]))
    assert [s.result for s in result.analysis.dkim.signatures] == [AuthResult.PASS]
    assert result.analysis.dmarc is not None and result.analysis.dmarc.result is AuthResult.PASS


@pytest.mark.parametrize("raw", [
    b"From: a@\xff\xfe.example\r\n\r\nx\r\n",
    b"From\xff: a@victim.example\r\n\r\nx\r\n",
    b"Fr\xc3\xb6m: a@victim.example\r\n\r\nx\r\n",
    b"\xff\xff\xff\r\n\r\n",
    b"From: a@victim.example\r\nSubject: \xed\xa0\x80 surrogate\r\n\r\n\xf4\x90\x80\x80\r\n",
    b"From: a@sender.example\rSubject: bare CR\r\n\r\nbody\r",
    b"From: a@sender.example\n\tfolded\n\n",
    b"",
    b"\r\n\r\n",
])
def test_invalid_utf8_and_odd_line_ends(pool: ThreadPoolExecutor, raw: bytes) -> None:
    run(pool, raw)


# --- size: 1,000 headers, a 10 MB header, 100 signatures ----------------------------------------


def test_a_thousand_headers(pool: ThreadPoolExecutor) -> None:
    received = b"".join(b"Received: from h%d.example by mx.example; Tue, 1 Oct 2024\r\n" % n
                        for n in range(1000))
    result = run(pool, signed(message(extra=received)))
    assert "dkim=pass" in result.header


def test_a_thousand_forged_results_headers(pool: ThreadPoolExecutor) -> None:
    forged = b"".join(b"Authentication-Results: %s; dkim=pass\r\n"
                      % (b"mx.test.example" if n % 2 else b"other.example") for n in range(1000))
    raw = signed(message(extra=forged))
    run(pool, raw)
    headers, _ = parse_message(raw)
    indices = authres.forged_indices(headers, AUTHSERV_ID, False)
    assert indices == list(range(1000, 0, -2))


@pytest.mark.timeout(120)
def test_a_10mb_header_value(pool: ThreadPoolExecutor) -> None:
    big = b"X-Big: " + b"0123456789abcdef" * (10 * 2**20 // 16) + b"\r\n"
    result = run(pool, signed(message(extra=big)), memory_mb=160)
    assert "dkim=pass" in result.header


@pytest.mark.timeout(120)
def test_a_1mb_from_value(pool: ThreadPoolExecutor) -> None:
    """1 MiB (max_header_bytes) in one address. The From parser is a per-character Python
    loop (~0.3 s per MiB, run twice per message: prefetch and evaluation), so a 10 MB From
    costs seconds of the message deadline; the milter never sees one (max_header_bytes)."""
    raw = b"From: " + b"a" * 2**20 + b"@victim.example\r\nSubject: x\r\n\r\nbody\r\n"
    result = run(pool, raw, envelope("x@attacker.example", ATTACKER_IP), memory_mb=64)
    dmarc = result.analysis.dmarc
    assert dmarc is not None and dmarc.result is AuthResult.FAIL  # the domain is still read


@pytest.mark.timeout(120)
def test_a_long_from_list(pool: ThreadPoolExecutor) -> None:
    """16,000 mailboxes of one domain in one From (a 256 KB value): one author domain."""
    raw = signed(message(", ".join(["a@sender.example"] * 16000)))
    result = run(pool, raw, memory_mb=200)
    assert result.analysis.dmarc is not None


def _signature_header(raw: bytes) -> bytes:
    headers, _ = parse_message(raw)
    return headers[0].to_bytes()


def test_a_hundred_signatures_are_capped(pool: ThreadPoolExecutor) -> None:
    """max_signatures (10) are verified, the other 90 skipped: at most 10 key lookups."""
    signatures = b"".join(_signature_header(
        dkimkeys.sign(message(), ED, f"s{n}", "sender.example")) for n in range(99))
    raw = signatures + signed(message())
    result = run(pool, raw)
    dkim = result.analysis.dkim
    assert len(dkim.signatures) == 10 and dkim.skipped == 90
    assert len([q for q in result.queries if "._domainkey." in q[0]]) <= 10


class PrefetchCounter(StaticResolver):
    def __init__(self, records: list[DnsResult]) -> None:
        super().__init__(records)
        self.prefetched: list[tuple[str, str]] = []

    def prefetch(self, name: str, rdtype: str) -> None:
        self.prefetched.append((name, rdtype))


def test_prefetches_are_capped_per_message(pool: ThreadPoolExecutor) -> None:
    from mailsec_milter.dns import parse_zone_text

    signatures = b"".join(
        b"DKIM-Signature: v=1; a=ed25519-sha256; d=d%d.example; s=s; h=from; bh=x; b=y\r\n" % n
        for n in range(100))
    froms = b"".join(b"From: u@f%d.example\r\n" % n for n in range(1000))
    resolver = PrefetchCounter(parse_zone_text(ZONE))
    engine = Engine(SETTINGS, resolver, pool)
    headers, body = parse_message(signatures + froms + b"\r\nbody\r\n")
    engine.analyse(MessageSnapshot(envelope(), headers, body))
    assert len(resolver.prefetched) <= SETTINGS.dkim_max_signatures + 10


# --- malformed DKIM-Signature tags and keys ----------------------------------------------------

_GOOD = signed(message())
_SIG = _signature_header(_GOOD)
_REST = _GOOD[len(_SIG):]

MALFORMED_TAGS = [
    b"", b";", b";;;;", b"=", b"==;==", b"v=1", b"v=1; v=1", b"a=rsa-sha256; a=rsa-sha256",
    b"v=1; a=ed25519-sha256; d=sender.example; s=ed; h=from; bh=; b=",
    b"v=1; a=ed25519-sha256; d=sender.example; s=ed; h=from; bh=!!!!; b=!!!!",
    b"v=1; a=rsa-sha999; d=sender.example; s=ed; h=from; bh=YQ==; b=YQ==",
    b"v=1; a=ed25519-sha256; c=weird/weirder; d=sender.example; s=ed; h=from; bh=YQ==; b=YQ==",
    b"v=1; a=ed25519-sha256; d=sender.example; s=ed; h=from; l=-1; bh=YQ==; b=YQ==",
    b"v=1; a=ed25519-sha256; d=sender.example; s=ed; h=from; l=" + b"9" * 200 + b"; bh=Y; b=Y",
    b"v=1; a=ed25519-sha256; d=sender.example; s=ed; h=from; l=abc; bh=YQ==; b=YQ==",
    b"v=1; a=ed25519-sha256; d=sender.example; s=ed; h=from; t=9999999999; x=1; bh=Y; b=Y",
    b"v=1; a=ed25519-sha256; d=sender.example; s=ed; h=; bh=YQ==; b=YQ==",
    b"v=1; a=ed25519-sha256; d=sender.example; s=ed; h=subject; bh=YQ==; b=YQ==",
    b"v=1; a=ed25519-sha256; d=; s=ed; h=from; bh=YQ==; b=YQ==",
    b"v=1; a=ed25519-sha256; d=sender example; s=ed; h=from; bh=YQ==; b=YQ==",
    b"v=1; a=ed25519-sha256; d=sender.example; s=../../etc; h=from; bh=YQ==; b=YQ==",
    b"v=1; a=ed25519-sha256; d=sender.example; s=" + b"a." * 200 + b"; h=from; bh=Y; b=Y",
    b"v=1; a=ed25519-sha256; d=sender.example; s=ed; i=a@victim.example; h=from; bh=Y; b=Y",
    b"v=1; a=ed25519-sha256; d=sender.example; s=ed; q=dns/other; h=from; bh=Y; b=Y",
    b"v=1; a=ed25519-sha256; d=b\xc3\xbccher.example; s=\xff; h=from; bh=YQ==; b=YQ==",
    b"v=1; a=ed25519-sha256; d=sender.example\x00; s=ed; h=from; bh=YQ==; b=YQ==",
    b"v=1; a=ed25519-sha256; d=sender.example; s=ed; h=" + b"from:" * 10000 + b"from; bh=Y; b=Y",
    b"v=1; a=ed25519-sha256; d=sender.example; s=ed; h=from; bh=Y; b=" + b"A" * 60000,
    b"v=1; 1a=x; a=ed25519-sha256; d=sender.example; s=ed; h=from; bh=Y; b=Y",
    b"v=2; a=ed25519-sha256; d=sender.example; s=ed; h=from; bh=YQ==; b=YQ==",
    b"v=1; a=ed25519-sha256; d=sender.example; s=ed; h=from;\r\n\tbh=Y\r\n Q==; b=Y\r\n\t Q==",
]


@pytest.mark.parametrize("tags", MALFORMED_TAGS)
def test_malformed_signature_tags(pool: ThreadPoolExecutor, tags: bytes) -> None:
    raw = b"DKIM-Signature: " + tags + b"\r\n" + message()
    result = run(pool, raw)
    (signature,) = result.analysis.dkim.signatures
    assert signature.result in NOT_PASS - {AuthResult.TEMPERROR}


def _der_length(n: int) -> bytes:
    if n < 0x80:
        return bytes([n])
    body = n.to_bytes((n.bit_length() + 7) // 8, "big")
    return bytes([0x80 | len(body)]) + body


def _der(tag: int, content: bytes) -> bytes:
    return bytes([tag]) + _der_length(len(content)) + content


def _der_int(value: int) -> bytes:
    return _der(0x02, value.to_bytes(value.bit_length() // 8 + 1, "big"))


def rsa_public_key(modulus: int, exponent: int) -> str:
    """A SubjectPublicKeyInfo for any (n, e), as the base64 p= of a key record."""
    rsa_key = _der(0x30, _der_int(modulus) + _der_int(exponent))
    algorithm = _der(0x30, bytes.fromhex("06092a864886f70d010101") + b"\x05\x00")
    spki = _der(0x30, algorithm + _der(0x03, b"\x00" + rsa_key))
    return base64.b64encode(spki).decode("ascii")


_HUGE_N = (1 << (MAX_RSA_BITS + 1024)) - 159  # odd, 17408 bits
_BIG_N = (1 << 16384) - 1053  # 16384 bits: allowed, but not with a huge exponent

MALFORMED_KEYS: list[tuple[str, frozenset[AuthResult], str]] = [
    ("", frozenset({AuthResult.PERMERROR}), ""),
    ("v=DKIM1; k=ed25519; p=", frozenset({AuthResult.PERMERROR}), "revoked"),
    ("v=DKIM1; k=ed25519; p=!!!notbase64!!!", frozenset({AuthResult.PERMERROR}), ""),
    ("v=DKIM1; k=ed25519; p=" + "A" * 20, frozenset({AuthResult.PERMERROR}), ""),
    ("v=DKIM1; k=rsa; p=" + ED.public_b64, frozenset({AuthResult.PERMERROR}), ""),
    ("v=DKIM1; k=rsa; p=MIGfMA0GCSqGSIb3DQEBAQUAA4GNADCBiQKBgQ", frozenset({AuthResult.PERMERROR}),
     ""),
    ("v=DKIM1; k=dsa; p=" + ED.public_b64, frozenset({AuthResult.PERMERROR}), ""),
    ("v=DKIM2; k=ed25519; p=" + ED.public_b64, frozenset({AuthResult.PERMERROR}), ""),
    ("v=DKIM1; k=ed25519; h=md5; p=" + ED.public_b64, frozenset({AuthResult.PERMERROR}), ""),
    ("v=DKIM1; k=ed25519; s=chat; p=" + ED.public_b64, frozenset({AuthResult.PERMERROR}), ""),
    ("v=DKIM1; k=ed25519; p=" + ED.public_b64 + "; p=" + ED.public_b64,
     frozenset({AuthResult.PERMERROR}), ""),
    ("v=DKIM1; k=ed25519\x00; p=" + ED.public_b64, NOT_PASS, ""),
    ("v=DKIM1; k=ed25519; x-unknown=1; s=email; t=y; p=" + ED.public_b64,
     frozenset({AuthResult.PASS}), ""),  # unknown tags are ignored, t=y is only a flag
    ("v=DKIM1; k=ed25519; n=" + "n" * 5000 + "; p=" + ED.public_b64,
     frozenset({AuthResult.PASS}), ""),
    ("v=DKIM1; k=rsa; p=" + rsa_public_key(_HUGE_N, 65537), frozenset({AuthResult.PERMERROR}),
     "over 16384 bits"),
    ("v=DKIM1; k=rsa; p=" + rsa_public_key(_BIG_N, _BIG_N - 2),
     frozenset({AuthResult.PERMERROR}), "exponent"),
]


@pytest.mark.parametrize(("record", "allowed", "reason"), MALFORMED_KEYS,
                         ids=[f"key{n}" for n in range(len(MALFORMED_KEYS))])
def test_malformed_keys(pool: ThreadPoolExecutor, record: str,
                        allowed: frozenset[AuthResult], reason: str) -> None:
    """Garbage, mismatched, restricted and over-costly keys for a valid ed25519 signature.
    An RSA key whose size or exponent would cost seconds of CPU per verification (a
    16384-bit exponent with a 16384-bit modulus: ~10 s each, holding the GIL) is refused
    before any arithmetic (checks/dkim.py MAX_RSA_BITS)."""
    zone = ZONE.replace(dkimkeys.zone_line("ed._domainkey.sender.example", ED.record()),
                        dkimkeys.zone_line("ed._domainkey.sender.example", record))
    result = run(pool, _GOOD, zone=zone)
    (signature,) = result.analysis.dkim.signatures
    assert signature.result in allowed, signature
    assert reason in signature.comment


def test_rsa_keys_cost_bounded_with_many_signatures(pool: ThreadPoolExecutor) -> None:
    """Ten signatures all naming the over-costly key: refused ten times, cheaply."""
    record = "v=DKIM1; k=rsa; p=" + rsa_public_key(_BIG_N, _BIG_N - 2)
    zone = ZONE + dkimkeys.zone_line("big._domainkey.sender.example", record) + "\n"
    body = b"Hello.\r\n"
    body_hash = base64.b64encode(hashlib.sha256(  # a correct bh=, so verification gets to RSA
        CanonicalizationPolicy.from_c_value(b"relaxed/relaxed").canonicalize_body(body)).digest())
    raw = b"".join(b"DKIM-Signature: v=1; a=rsa-sha256; c=relaxed/relaxed; d=sender.example; "
                   b"s=big; t=%d; h=from:to:subject; bh=%s; b=%s\r\n"
                   % (n, body_hash, base64.b64encode(b"\x01" * 2048)) for n in range(10))
    raw += message(body=body)
    result = run(pool, raw, zone=zone)
    assert [s.result for s in result.analysis.dkim.signatures] == [AuthResult.PERMERROR] * 10


# --- l= abuse ----------------------------------------------------------------------------------


@pytest.mark.parametrize("appended", [b"", b"\r\n\r\n", b"Click here: http://evil.example\r\n",
                                      b"<html>" * 10000 + b"\r\n"])
def test_body_length_limit_abuse(pool: ThreadPoolExecutor, appended: bytes) -> None:
    """Content appended after an l= limited body is never covered by a pass (RFC 6376 §8.2)."""
    raw = signed(message(), length=True) + appended
    (signature,) = run(pool, raw).analysis.dkim.signatures
    if appended.strip():
        assert signature.result is AuthResult.POLICY and "unsigned" in signature.comment
    else:  # trailing empty lines are not content (simple body canonicalisation)
        assert signature.result is AuthResult.PASS


@pytest.mark.parametrize("length", ["0", "99999999999999999999", "", "-0", " 5"])
def test_body_length_values(pool: ThreadPoolExecutor, length: str) -> None:
    raw = dkimkeys.sign_with_tags(
        message(), ED, [("v", "1"), ("a", "ed25519-sha256"), ("d", "sender.example"),
                        ("s", "ed"), ("l", length)], ["from", "to", "subject"])
    (signature,) = run(pool, raw + b"appended\r\n").analysis.dkim.signatures
    assert signature.result is not AuthResult.PASS


# --- SPF: lookup and void limits, macro tricks, hostile identities ------------------------------

SPF_ZONE = ZONE + "\n".join([
    'chain.example. TXT "v=spf1 include:c1.chain.example -all"',
    *(f'c{n}.chain.example. TXT "v=spf1 include:c{n + 1}.chain.example -all"'
      for n in range(1, 12)),
    'c12.chain.example. TXT "v=spf1 ip4:192.0.2.0/24 -all"',
    'void.example. TXT "v=spf1 a:v1.void.example a:v2.void.example a:v3.void.example -all"',
    'mx.example. TXT "v=spf1 mx -all"',
    'mx.example. MX 10 mx1.mx.example.',
    *(f"mx.example. MX {n} mx{n}.mx.example." for n in range(2, 13)),
    'ptr.example. TXT "v=spf1 ptr -all"',
    *(f"10.2.0.192.in-addr.arpa. PTR p{n}.ptr.example." for n in range(20)),
    'macro.example. TXT "v=spf1 exists:%{l}.%{l}.%{l}.%{l}.%{l}.%{i}._spf.%{d} -all"',
    'macro2.example. TXT "v=spf1 exists:%{ir}.%{v}.%{l1r+-=_}.%{h}.%{d2}.x.example ~all"',
    'macro3.example. TXT "v=spf1 a:%{z}.example -all"',
    'macro4.example. TXT "v=spf1 a:%%{s}% -all"',
    'macro5.example. TXT "v=spf1 include:%{s} -all"',
    'macro6.example. TXT "v=spf1 -all exp=explain.macro6.example"',
    'explain.macro6.example. TXT "%{i} dkim=pass\\013\\010X-Injected: yes; %{l} (%{s}"',
    'macro7.example. TXT "v=spf1 exists:%{p}.%{p}.%{p}.x.example a:%{c}.%{r}.%{t} -all"',
    'loop.example. TXT "v=spf1 redirect=%{d}"',
    'loopa.example. TXT "v=spf1 include:loopb.example -all"',
    'loopb.example. TXT "v=spf1 include:loopa.example -all"',
    'cidr.example. TXT "v=spf1 ip4:192.0.2.1/99 ip6:::1/200 -all"',
    'many.example. TXT "v=spf1 ' + "a " * 100 + '-all"',
    'two.example. TXT "v=spf1 -all"',
    'two.example. TXT "v=spf1 +all"',
    'nonascii.example. TXT "v=spf1 a:b\\195\\188cher.example -all"',
    'long.example. TXT ' + " ".join(['"v=spf1 ' + "ip4:198.51.100.1 " * 13 + '"']
                                     + ['"' + "ip4:198.51.100.2 " * 14 + '"'] * 20) + ' "-all"',
    'cname.example. CNAME cname.example.',
])

SPF_DOMAINS: list[tuple[str, frozenset[AuthResult]]] = [
    ("chain.example", frozenset({AuthResult.PERMERROR})),  # 12 includes: over 10 lookups
    ("void.example", frozenset({AuthResult.PERMERROR})),  # 3 void lookups: over 2
    ("mx.example", frozenset({AuthResult.PERMERROR})),  # 12 MX names: over 10
    # 20 PTR names, none with an address: pyspf counts each empty A lookup as void
    ("ptr.example", frozenset({AuthResult.FAIL, AuthResult.PERMERROR})),
    ("macro.example", frozenset({AuthResult.FAIL})),
    ("macro2.example", frozenset({AuthResult.SOFTFAIL})),
    ("macro3.example", frozenset({AuthResult.PERMERROR})),
    ("macro4.example", frozenset({AuthResult.PERMERROR})),
    ("macro5.example", frozenset({AuthResult.PERMERROR})),  # the sender is not a domain
    ("macro6.example", frozenset({AuthResult.FAIL})),
    ("macro7.example", frozenset({AuthResult.FAIL, AuthResult.PERMERROR})),
    ("loop.example", frozenset({AuthResult.PERMERROR})),
    ("loopa.example", frozenset({AuthResult.PERMERROR})),
    ("cidr.example", frozenset({AuthResult.PERMERROR})),
    ("many.example", frozenset({AuthResult.PERMERROR})),
    ("two.example", frozenset({AuthResult.PERMERROR})),
    ("nonascii.example", frozenset({AuthResult.PERMERROR, AuthResult.FAIL})),
    ("long.example", frozenset({AuthResult.FAIL})),
    ("cname.example", frozenset({AuthResult.TEMPERROR})),  # a CNAME loop is a SERVFAIL
]


@pytest.mark.parametrize(("domain", "expected"), SPF_DOMAINS, ids=[d for d, _ in SPF_DOMAINS])
def test_spf_records_that_hit_limits_or_play_macro_tricks(pool: ThreadPoolExecutor,
                                                          domain: str,
                                                          expected: frozenset[AuthResult]) -> None:
    local = "first.last+" + "x" * 50
    env = envelope(f"{local}@{domain}", "192.0.2.10", helo="mail.sender.example")
    result = run(pool, message(f"a@{domain}"), env, zone=SPF_ZONE)
    spf = result.analysis.spf_mailfrom
    assert spf.result in expected, spf
    # no text from the record (exp=, the macro-expanded names) reaches the header
    for text in ("Injected", "dkim=pass\\", local):
        assert text not in spf.comment
    assert "X-Injected" not in result.header
    mail_from_queries = len(result.queries)
    assert mail_from_queries <= 2 * (2 + 10 * 11 + 1) + 20  # both identities, DMARC


@pytest.mark.parametrize(("mail_from", "helo"), [
    ("<@a.example,@b.example:u@sender.example>", "mail.sender.example"),
    ("u@[192.0.2.10]", "mail.sender.example"),
    ("u@-bad-.example", "mail.sender.example"),
    ("x" * 300 + "@sender.example", "mail.sender.example"),
    ("u@" + "a" * 64 + ".example", "mail.sender.example"),
    ("u@" + ("abcdefghij." * 30) + "example", "mail.sender.example"),
    ("u@sender.example.", "mail.sender.example"),
    ("\udcff\udcfe@sender.example", "mail.sender.example"),
    ("u@\udcff.example", "\udcff.example"),
    ("u@bücher.example", "mail.bücher.example"),
    ("a\"b c\"@sender.example", "mail.sender.example"),
    ("", "[192.0.2.10]"),
    ("", ""),
    ("", "a..b"),
    ("", "x" * 300),
    ("@", "."),
    ("u@sender.example\r\nX-Injected: yes", "mail.sender.example\r\n"),
])
def test_spf_hostile_identities(pool: ThreadPoolExecutor, mail_from: str, helo: str) -> None:
    result = run(pool, message(), envelope(mail_from, SENDER_IP, helo), zone=SPF_ZONE)
    lines = result.header.split("\n")
    assert not any(line.lstrip().startswith("X-Injected") for line in lines)
    for identity in (SpfIdentity.MAILFROM, SpfIdentity.HELO):
        outcome = check_spf(StaticResolver.from_zone_text(SPF_ZONE), SENDER_IP, identity,
                            mail_from, helo, AUTHSERV_ID)
        assert outcome.result in frozenset(AuthResult)


# --- TLS macro values ----------------------------------------------------------------------------

HOSTILE_TLS = [
    TlsInfo(version="TLSv1.3\r\nX-Injected: yes", cipher="a;b=c (d) \"e\\", cipher_bits=256),
    TlsInfo(version="TLSv1.3", cipher="x" * 100_000, cipher_bits=10**9, verify="OK\r\n; dkim=pass"),
    TlsInfo(version="\x00\x01\x7f", cipher="\udcff\ufffd", cipher_bits=-1, verify="(",
            cert_subject="/CN=a\r\nX-Evil: 1", cert_issuer=")" * 1000),
    TlsInfo(version=";", cipher=";", cipher_bits=0, verify=";"),
    TlsInfo(version=None, cipher="TLS_AES_256_GCM_SHA384", cipher_bits=None),
]


@pytest.mark.parametrize("tls", HOSTILE_TLS, ids=[f"tls{n}" for n in range(len(HOSTILE_TLS))])
def test_hostile_tls_macro_values(pool: ThreadPoolExecutor, tls: TlsInfo) -> None:
    result = run(pool, signed(message()), envelope(tls=tls))
    unfolded = result.header.replace("\n", "")
    assert "x-tls=pass" in unfolded  # each one names a cipher or version: encrypted
    assert not any(line.lstrip().startswith(("X-Injected", "X-Evil"))
                   for line in result.header.split("\n"))
    assert unfolded.count("dkim=pass") == 1


# --- the Mail::DKIM corpus -------------------------------------------------------------------

MAIL_DKIM = "dkim/mail-dkim-corpus"


def fake_dns_zone(path: Path) -> str:
    """Mail::DKIM's t/FAKE_DNS.dat (``name<space>TXT-text``; ``NXDOMAIN``, ``~~Query timed
    out~~`` and ``~~SERVFAIL~~`` stand for DNS outcomes, ``""`` for an empty record) as
    StaticResolver zone text."""
    special = {"NXDOMAIN": "NXDOMAIN", "~~Query timed out~~": "TIMEOUT",
               "~~SERVFAIL~~": "SERVFAIL", '""': '""'}
    lines = []
    for line in path.read_text().splitlines():
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        name, _, value = line.strip().partition(" ")
        value = value.strip()
        if value in special:
            lines.append(f"{name}. TXT {special[value]}")
        else:
            lines.append(dkimkeys.zone_line(name, value))
    return "\n".join(lines) + "\n"


def mail_dkim_cases() -> list[tuple[str, str]]:
    base = conformance_dir() / MAIL_DKIM
    expectations = base / "expectations.tsv"
    if not expectations.is_file():
        return [("missing", "missing")]
    with expectations.open() as handle:
        wanted = {row["file"]: row["expected"] for row in csv.DictReader(handle, delimiter="\t")}
    corpus = sorted(p.name for p in (base / "corpus").iterdir())
    return [(name, wanted.get(name, "unknown")) for name in corpus]


@pytest.fixture(scope="module")
def mail_dkim_zone() -> str:
    path = conformance_dir() / MAIL_DKIM / "FAKE_DNS.dat"
    if not path.is_file():
        missing_suite(path)
    return fake_dns_zone(path)


@pytest.mark.parametrize(("name", "expected"), mail_dkim_cases())
def test_mail_dkim_corpus(pool: ThreadPoolExecutor, mail_dkim_zone: str, name: str,
                          expected: str) -> None:
    """Must not crash and gets a defined result; what Mail::DKIM calls fail or invalid never
    passes here. (Its "pass" cases include RFC 4870 DomainKeys, pre-RFC drafts, rsa-sha1 and
    512-bit keys, which RFC 8301 and RFC 6376 make policy or permerror for us.)"""
    path = conformance_dir() / MAIL_DKIM / "corpus" / name
    if not path.is_file():
        missing_suite(path)
    env = envelope("", "192.0.2.1", helo="corpus.example")
    result = run(pool, path.read_bytes(), env, zone=ZONE + mail_dkim_zone)
    results = [s.result for s in result.analysis.dkim.signatures]
    if expected in ("fail", "invalid"):
        assert AuthResult.PASS not in results, results
    if name == "goodkey_ed25519.txt":  # the one modern signature in the corpus
        assert results == [AuthResult.PASS]
    if name in ("badkey_14.txt", "badkey_15.txt"):  # the DNS timeout and SERVFAIL cases
        assert results == [AuthResult.TEMPERROR]


# --- the deadline ------------------------------------------------------------------------------


def test_expired_deadline_gives_temperror_never_none(pool: ThreadPoolExecutor) -> None:
    """With no time left every lookup is a timeout: results are temperror, not none/fail, and
    the verdict is the configured tempfail."""
    settings = replace(SETTINGS, message_deadline=0.0)
    resolver = StaticResolver.from_zone_text(ZONE)
    engine = Engine(settings, resolver, pool, clock=lambda: 1000.0)
    snapshot = MessageSnapshot(envelope(), *parse_message(signed(message())))
    analysis = engine.analyse(snapshot)
    assert Deadline(0.0, lambda: 1000.0).expired
    assert analysis.dmarc is not None and analysis.dmarc.result is AuthResult.TEMPERROR
    assert decide(analysis, snapshot.envelope, settings).action is Action.TEMPFAIL
