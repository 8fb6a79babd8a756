"""Fuzz targets: one function per parser we own, each taking raw bytes and asserting properties.

Shared by the coverage-guided harnesses (``fuzz/fuzz_*.py``, atheris) and the hypothesis property
tests (``tests/robustness/test_fuzz_properties.py``). A target may only end in two ways: it
returns, or it raises ``AssertionError`` because a property broke. Any other exception escaping
a target is a crash of the code under test.

Where a public function swallows its own exceptions as a safety net (``author_domains``,
``parse_record``), the target calls the inner function too: a swallowed exception is still a
bug, because the safety net answers with a conservative but wrong result.

The targets are deterministic: no clock, no network, no randomness (the DKIM fixture is signed
once with a fixed ed25519 seed and a fixed ``t=``), so a crash input reproduces anywhere.
"""

from __future__ import annotations

import base64
import ipaddress
import re
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from unittest import mock

import dkim
import dkim.util
import nacl.encoding
import nacl.signing

from mailsec_milter import addresses, authres, config, model
from mailsec_milter.checks import dkim as dkim_check
from mailsec_milter.checks import dmarc
from mailsec_milter.checks import spf as spf_check
from mailsec_milter.dns import DnsOutcome, DnsResult, StaticResolver
from mailsec_milter.engine import Engine
from mailsec_milter.model import AuthResult, Envelope, Header, MessageSnapshot, TlsInfo
from mailsec_milter.policy import Action, _fill, decide
from tests.support.arshape import assert_well_formed_ar

__all__ = ["SEEDS", "TARGETS", "assert_well_formed_ar"]

RESULT_WORDS = frozenset(AuthResult)
OURS = "mx.fuzz.example"

def _text(data: bytes) -> str:
    return data.decode("utf-8", errors="replace")


def _parts(data: bytes, count: int, sep: bytes = b"\x00") -> list[bytes]:
    parts = data.split(sep, count - 1)
    return parts + [b""] * (count - len(parts))


# --- model.parse_message ---------------------------------------------------------------------


def _serialise(headers: Sequence[Header], body: bytes) -> bytes:
    return b"".join(h.to_bytes() for h in headers) + b"\r\n" + body


def target_parse_message(data: bytes) -> None:
    headers, body = model.parse_message(data)
    assert isinstance(body, bytes)
    for header in headers:
        assert isinstance(header.name, str) and isinstance(header.raw_value, bytes)
        assert header.name == header.name.strip()
        assert ":" not in header.name or header.name == ""
        assert "\n" not in header.value
    # parse ∘ serialise is idempotent after one round (names are normalised on the first)
    once = _serialise(headers, body)
    again_headers, again_body = model.parse_message(once)
    assert _serialise(again_headers, again_body) == once
    assert len(again_headers) == len(headers)


# --- addresses.author_domains ----------------------------------------------------------------


def target_author_domains(data: bytes) -> None:
    values = [_text(v) for v in data.split(b"\x00")[:6]]
    found = addresses._author_domains(values)  # the inner function: exceptions surface here
    assert addresses.author_domains(values) == found
    assert found.from_headers == len(values)
    assert len(set(found.domains)) == len(found.domains)
    assert set(found.salvaged) <= set(found.domains)
    for domain in found.domains:
        assert addresses.normalise_domain(domain) == domain, domain
        assert domain.isascii() and len(domain) <= 253 and ".." not in domain
    order = list(addresses.AuthorProblem)
    assert list(found.problems) == sorted(set(found.problems), key=order.index)
    if len(values) > 1:
        assert addresses.AuthorProblem.MULTIPLE_FROM_HEADERS in found.problems
    if not found.problems:  # the one normal case
        assert found.mailboxes == 1 and len(found.domains) == 1 and not found.salvaged
    for value in values:
        name = addresses.normalise_domain(value)
        assert name is None or addresses.normalise_domain(name) == name


# --- checks.dmarc.parse_record ---------------------------------------------------------------


def target_dmarc_record(data: bytes) -> None:
    for text in (data, _text(data)):
        for mode in ("rfc9989", "rfc7489"):
            parsed = dmarc._parse_record(text, mode)  # type: ignore[arg-type]
            assert dmarc.parse_record(text, mode=mode) == parsed  # type: ignore[arg-type]
            assert parsed.status in dmarc.RecordStatus
            assert (parsed.record is not None) == (parsed.status is dmarc.RecordStatus.VALID)
            assert parsed.psd in ("y", "n", "u")
            record = parsed.record
            if record is None:
                assert parsed.error
                continue
            assert {record.p, record.sp, record.np} <= set(dmarc.Policy)
            assert record.pct is None or 0 <= record.pct <= 100
            assert record.adkim in dmarc.Alignment and record.aspf in dmarc.Alignment
            if mode == "rfc7489":
                assert not record.t and record.psd == "u"
            else:
                assert record.pct is None


# --- authres: extract_authserv_id, forged_indices, quote_value, comment, render ----------------


def target_authres(data: bytes) -> None:
    text = _text(data)
    found = authres.extract_authserv_id(text)
    assert found is None or (found and "\r" not in found and "\n" not in found)
    # whatever we render as the authserv-id reads back as that id
    clean = re.sub(r"[^\x20-\x7e]", "?", text)[:256]
    rendered = authres.render(text, [])
    assert_well_formed_ar(rendered, 0)
    assert authres.extract_authserv_id(rendered) == (clean.strip() or None), rendered
    # forged-header finder over headers cut from the input
    headers = []
    for line in data.split(b"\n")[:50]:
        name, _, value = line.partition(b":")
        headers.append(Header(_text(name), value))
    for subdomains in (False, True):
        indices = authres.forged_indices(headers, OURS, subdomains)
        count = sum(1 for h in headers if h.name.strip().lower() == "authentication-results")
        assert indices == sorted(set(indices), reverse=True)
        assert all(1 <= i <= count for i in indices)
    # every outside text goes through quote_value / comment and stays one well-formed header
    a, b, c = (_text(p) for p in _parts(data, 3, b"\x01"))
    for piece in (a, b, c, text):
        assert not set(authres.quote_value(piece)) & {"\r", "\n"}
        assert not set(authres.comment(piece)) & {"\r", "\n"}
    results = [authres.ResInfo("x-fuzz", "pass", a, (("smtp.x", b), ("header.y", c)), reason=c),
               authres.ResInfo("dkim", "fail", c, (("header.d", a),))]
    assert_well_formed_ar(authres.render(OURS, results), 2)


# --- checks.dkim.parse_tag_list and the verification wrapper ---------------------------------


def target_dkim_tags(data: bytes) -> None:
    tags = dkim_check.parse_tag_list(data)
    if tags is None:
        return
    for name, value in tags.items():
        assert re.fullmatch(r"[A-Za-z][A-Za-z0-9_]*", name), name  # case kept (RFC 6376 3.2)
        assert value == value.strip()
    key = dkim_check.key_name(tags)
    assert key is None or (key == key.lower() and "._domainkey." in key
                           and not any(c.isspace() for c in key))


_ED_SEED = b"\x07" * 32
_SIGNER = nacl.signing.SigningKey(_ED_SEED)
ED_PUBLIC = _SIGNER.verify_key.encode(encoder=nacl.encoding.Base64Encoder).decode("ascii")
ED_RECORD = f"v=DKIM1; k=ed25519; p={ED_PUBLIC}".encode()
BASE_MESSAGE = (
    b"From: Joe Example <joe@fuzz.example>\r\n"
    b"To: Sam <sam@rcpt.example>\r\n"
    b"Subject: fuzzing\r\n"
    b"Date: Tue, 01 Oct 2024 10:00:00 +0000\r\n"
    b"Message-ID: <fuzz-1@fuzz.example>\r\n"
    b"\r\n"
    b"Hello,\r\n"
    b"\r\n"
    b"a body line with  two spaces \r\n"
)


def _sign(message: bytes, length: bool = False) -> bytes:
    with mock.patch("time.time", return_value=1_700_000_000):
        header = dkim.sign(message, b"ed", b"fuzz.example",
                           _SIGNER.encode(encoder=nacl.encoding.Base64Encoder),
                           signature_algorithm=b"ed25519-sha256",
                           include_headers=[b"from", b"to", b"subject", b"date", b"message-id"],
                           length=length)
    return bytes(header) + message


SIGNED_MESSAGE = _sign(BASE_MESSAGE)
SIGNED_WITH_LENGTH = _sign(BASE_MESSAGE, length=True)
DKIM_KEY_NAME = "ed._domainkey.fuzz.example"


def _snapshot(raw: bytes, tls: TlsInfo | None = None) -> MessageSnapshot:
    headers, body = model.parse_message(raw)
    envelope = Envelope(client_ip="192.0.2.1", helo="mail.fuzz.example",
                        mail_from="bounce@fuzz.example", rcpt_to=("sam@rcpt.example",),
                        tls=tls or TlsInfo())
    return MessageSnapshot(envelope, headers, body)


def _dkim_resolver(key_records: Sequence[bytes]) -> StaticResolver:
    return StaticResolver([DnsResult(DKIM_KEY_NAME, "TXT", DnsOutcome.ANSWER,
                                     tuple((record,) for record in key_records), 300)])


def _check_dkim(raw: bytes, key_records: Sequence[bytes] = (ED_RECORD,),
                max_signatures: int = 5) -> dkim_check.DkimOutcome:
    snapshot = _snapshot(raw)
    outcome = dkim_check.check_dkim(_dkim_resolver(key_records), snapshot,
                                    dkim_check.DkimSettings(max_signatures=max_signatures))
    count = len(snapshot.headers_named("DKIM-Signature"))
    assert len(outcome.signatures) == min(count, max_signatures)
    assert outcome.skipped == max(0, count - max_signatures)
    for signature in outcome.signatures:
        assert signature.result in RESULT_WORDS
        assert signature.result is not AuthResult.TEMPERROR  # no DNS trouble in this zone
    return outcome


def target_dkim_verify(data: bytes) -> None:
    """Mutations of a signed message (and of its key record) through check_dkim."""
    mode, rest = (data[0] % 6, data[1:]) if data else (0, b"")
    if mode == 0:  # our own signature header replaced by the input
        raw = b"DKIM-Signature:" + rest + b"\r\n" + BASE_MESSAGE
        for header in _snapshot(raw).headers_named("DKIM-Signature"):
            target_dkim_tags(header.raw_value)
        _check_dkim(raw)
    elif mode == 1:  # the key record replaced by the input
        outcome = _check_dkim(SIGNED_MESSAGE, [rest])
        if outcome.signatures[0].result is AuthResult.PASS:
            tags = dkim.util.parse_tag_value(rest)  # dkimpy's reading of the record passed
            key = base64.b64decode(tags.get(b"p", b""), validate=False)
            assert key == base64.b64decode(ED_PUBLIC), "passed with a different key"
    elif mode in (2, 3):  # bytes inserted into / overwritten in the signed message
        where = int.from_bytes(rest[:2], "big") % (len(SIGNED_MESSAGE) + 1)
        piece = rest[2:]
        tail = SIGNED_MESSAGE[where + (len(piece) if mode == 3 else 0):]
        _check_dkim(SIGNED_MESSAGE[:where] + piece + tail)
    elif mode == 4:  # extra header lines (more signatures, more From fields) on top
        _check_dkim(rest.replace(b"\x00", b"\r\n") + b"\r\n" + SIGNED_MESSAGE)
    else:  # l= abuse: content appended after a body-length-limited signature
        outcome = _check_dkim(SIGNED_WITH_LENGTH + rest)
        if rest.strip(b"\r\n \t"):
            assert outcome.signatures[0].result is not AuthResult.PASS


# --- config loader -----------------------------------------------------------------------------

_FILL_VALUES = ("example.com", "%s%%{}{{}}\r\n\x00é", "x" * 300)


def _check_settings(settings: config.Settings) -> None:
    assert re.fullmatch(r"[A-Za-z0-9.\-_]+", settings.authserv_id)
    assert re.fullmatch(r"[!-9;-~]+", settings.quarantine_header)
    for name in config.REPLY_KEYS:
        reply = getattr(settings, name)
        for value in _FILL_VALUES:
            filled = _fill(reply, value, value)  # what policy does with every reject
            assert re.fullmatch(r"[\x20-\x7e\t]+", filled.text), filled


def target_config_text(data: bytes) -> None:
    try:
        settings = config.settings_from_toml(_text(data), "fuzz.toml", lambda: "host.example")
    except config.ConfigError as exc:
        assert str(exc)
        return
    _check_settings(settings)


def config_from_mapping(mapping: object) -> None:
    """settings_from_mapping on any parsed-TOML-like value: a Settings or a ConfigError."""
    try:
        settings = config.settings_from_mapping(mapping, lambda: "host.example")  # type: ignore[arg-type]
    except config.ConfigError as exc:
        assert str(exc)
        return
    _check_settings(settings)


# --- checks.spf.check_spf over a static zone ------------------------------------------------


def _ip(raw: bytes) -> str:
    if len(raw) >= 16:
        return str(ipaddress.IPv6Address(raw[:16]))
    return str(ipaddress.IPv4Address(raw[:4].ljust(4, b"\x00")))


def _spf_zone(record: bytes, included: bytes) -> StaticResolver:
    answer = DnsOutcome.ANSWER
    return StaticResolver([
        DnsResult("fuzz.example", "TXT", answer, ((record,),), 300),
        DnsResult("inc.fuzz.example", "TXT", answer, ((included,),), 300),
        DnsResult("fuzz.example", "A", answer, ("192.0.2.1",), 300),
        DnsResult("fuzz.example", "AAAA", answer, ("2001:db8::1",), 300),
        DnsResult("fuzz.example", "MX", answer, ((10, "mx.fuzz.example"),), 300),
        DnsResult("mx.fuzz.example", "A", answer, ("192.0.2.2",), 300),
        DnsResult("1.2.0.192.in-addr.arpa", "PTR", answer, ("fuzz.example",), 300),
        DnsResult("slow.fuzz.example", "TXT", DnsOutcome.TIMEOUT),
        DnsResult("slow.fuzz.example", "A", DnsOutcome.TIMEOUT),
        DnsResult("broken.fuzz.example", "TXT", DnsOutcome.SERVFAIL),
        DnsResult("loop.fuzz.example", "CNAME", answer, ("loop.fuzz.example",), 300),
    ])


_SPF_COMMENT = re.compile(r"[A-Za-z0-9 ._:\-]*")


def target_spf(data: bytes) -> None:
    ip_raw, record, included, local, helo = _parts(data, 5)
    resolver = _spf_zone(record, included)
    client_ip = _ip(ip_raw)
    mail_from = local.decode("utf-8", "surrogateescape") + "@fuzz.example"
    helo_name = helo.decode("utf-8", "surrogateescape") or "fuzz.example"
    for identity, sender in ((spf_check.SpfIdentity.MAILFROM, mail_from),
                             (spf_check.SpfIdentity.MAILFROM, ""),
                             (spf_check.SpfIdentity.HELO, "")):
        before = len(resolver.queries)
        outcome = spf_check.check_spf(resolver, client_ip, identity, sender, helo_name, OURS)
        assert outcome.result in RESULT_WORDS
        assert outcome.identity is identity
        assert _SPF_COMMENT.fullmatch(outcome.comment), outcome.comment
        # RFC 7208 §4.6.4: the record, at most 10 DNS terms each with at most 10 address
        # lookups (mx, ptr), the exp= record
        assert len(resolver.queries) - before <= 2 + 10 * 11 + 1


# --- the whole pure pipeline: parse, analyse, decide, render ---------------------------------

PIPELINE_ZONE = f"""
fuzz.example.              TXT "v=spf1 ip4:192.0.2.0/24 -all"
mail.fuzz.example.         TXT "v=spf1 a -all"
mail.fuzz.example.         A   192.0.2.1
_dmarc.fuzz.example.       TXT "v=DMARC1; p=reject; adkim=s"
_dmarc.other.example.      TXT "v=DMARC1; p=quarantine"
_dmarc.slow.example.       TXT TIMEOUT
{DKIM_KEY_NAME}.           TXT "{ED_RECORD.decode()}"
"""
_POOL: ThreadPoolExecutor | None = None
_ENGINE: Engine | None = None


def _engine() -> Engine:
    global _POOL, _ENGINE
    if _ENGINE is None:
        _POOL = ThreadPoolExecutor(max_workers=2, thread_name_prefix="fuzz-checks")
        settings = config.settings_from_mapping({"milter": {"authserv_id": OURS}})
        _ENGINE = Engine(settings, StaticResolver.from_zone_text(PIPELINE_ZONE), _POOL)
    return _ENGINE


def target_pipeline(data: bytes) -> None:
    """A fuzzed message (the first line, if it starts with ``TLS:``, holds hostile TLS macro
    values) through Engine.analyse, policy.decide and the A-R renderer."""
    tls = None
    if data.startswith(b"TLS:"):
        line, _, data = data.partition(b"\n")
        version, cipher, bits, verify = (_text(p) for p in _parts(line[4:], 4, b"|"))
        tls = TlsInfo(version=version or None, cipher=cipher or None,
                      cipher_bits=int(bits) if bits.isascii() and bits.isdigit() else None,
                      verify=verify or None)
    engine = _engine()
    snapshot = _snapshot(data, tls)
    analysis = engine.analyse(snapshot)
    assert not analysis.errors, analysis.errors  # a check crashed
    verdict = decide(analysis, snapshot.envelope, engine.settings)
    assert verdict.action in Action
    if verdict.reply is not None:
        assert re.fullmatch(r"[\x20-\x7e\t]+", verdict.reply.text), verdict.reply
    results = authres.results_for(analysis, verdict)
    assert_well_formed_ar(authres.render(OURS, results), len(results))
    indices = authres.forged_indices(snapshot.headers, OURS, False)
    assert indices == sorted(set(indices), reverse=True)


# --- registry and seeds ------------------------------------------------------------------------

TARGETS: dict[str, Callable[[bytes], None]] = {
    "parse_message": target_parse_message,
    "author_domains": target_author_domains,
    "dmarc_record": target_dmarc_record,
    "authres": target_authres,
    "dkim_tags": target_dkim_tags,
    "dkim_verify": target_dkim_verify,
    "config_text": target_config_text,
    "spf": target_spf,
    "pipeline": target_pipeline,
}

# libFuzzer dictionaries (-dict=): the tokens that get a mutator past the first syntax check
_TOML_TOKENS = [f"[{s}]" for s in sorted({k.section for k in config.KEYS})] + [
    f"{k.name} = " for k in config.KEYS] + [
    '"5s"', '"500ms"', '"1M"', '"64M"', "true", "false", '"inet:8894@127.0.0.1"', '"unix:/x"',
    '["127.0.0.1:53"]', '"550 5.7.1 {domain} {failed}"', '"451 4.7.0 x"', "{domain}", "{failed}",
    '{ "example.com" = "reject" }', '"rfc7489"', '"tempfail"', '"hold"', "\n"]
DICTIONARIES: dict[str, list[str]] = {
    "config_text": _TOML_TOKENS,
    "spf": ["v=spf1", " include:", " a:", " mx", " ptr", " exists:", " redirect=", " exp=",
            " ip4:", " ip6:", " -all", " ~all", "%{", "}", "%{l}", "%{L}", "%{s}", "%{d}",
            "%{i}", "%{ir}", "%{h}", "%{p}", "%{v}", "%{c}", "%{r}", "%{t}", "%%", "%_", "%-",
            "fuzz.example", "inc.fuzz.example", "slow.fuzz.example", "broken.fuzz.example",
            "loop.fuzz.example", "/24", "//64", "\x00"],
    "dmarc_record": ["v=DMARC1", "; p=", "; sp=", "; np=", "; psd=", "; t=", "; adkim=",
                     "; aspf=", "; pct=", "; rua=", "mailto:", "reject", "quarantine", "none"],
    "author_domains": ["@", "<", ">", ",", ":", ";", "\"", "(", ")", "\\", "[", "]",
                       "example.com", "xn--", "=?utf-8?q?", "\x00"],
    "authres": ["Authentication-Results:", "mx.fuzz.example", ";", "(", ")", "\"", "\\",
                "\x01", "\n"],
    "dkim_verify": ["DKIM-Signature:", "v=1; ", "a=ed25519-sha256; ", "a=rsa-sha256; ",
                    "d=fuzz.example; ", "s=ed; ", "h=from:to; ", "l=", "c=relaxed/simple; ",
                    "bh=", "b=", "k=ed25519; ", "p=", "t=s; ", "\r\n"],
    "pipeline": ["From: ", "DKIM-Signature: ", "Authentication-Results: ", "TLS:", "|",
                 "@fuzz.example", "@other.example", "@slow.example", "\r\n"],
}


def dictionary_text(name: str) -> str:
    """A libFuzzer dictionary file for target ``name`` (empty when it has none)."""
    lines = []
    for token in DICTIONARIES.get(name, []):
        data = token.encode("utf-8")
        escaped = "".join(chr(b) if 0x20 <= b < 0x7F and b not in b'"\\' else f"\\x{b:02x}"
                          for b in data)
        lines.append(f'"{escaped}"')
    return "\n".join(lines) + "\n"


_SIGNATURE_VALUE = SIGNED_MESSAGE.split(b"\r\n", 1)[0].partition(b":")[2]
SEEDS: dict[str, list[bytes]] = {
    "parse_message": [SIGNED_MESSAGE, b"A: 1\n folded\n\tagain\nB:2\n\nbody\n", b"no colon\n",
                      b"X:\r\n\r\n", b" leading: space\r\nY: y\r\n\r\n\r\n"],
    "author_domains": [b"Joe <joe@example.com>", b"a@b.example, c@d.example",
                       b"group: a@b.example, <c@d.example>;", b"\"q\\\"x\" <x@y.example>",
                       b"(c) a@b.example (d)", b"<@r1.example,@r2.example:u@d.example>",
                       b"a@example.net(.example.com", b"x@[192.0.2.1]\x00y@b\xc3\xbccher.example",
                       b"<>", b"\"unterminated <a@b.example>", b"a@xn--bcher-kva.example."],
    "dmarc_record": [b"v=DMARC1; p=reject; sp=none; adkim=s; aspf=r; pct=50; rua=mailto:a@b.c",
                     b"v=DMARC1;p=none", b"v=DMARC1; p=bogus; rua=mailto:x@y.example",
                     b"V = DMARC1 ; P = Quarantine ; np=reject; psd=y; t=y", b"v=spf1 -all",
                     b"v=DMARC1; p=reject; p=none", b"v=DMARC1\x00; p=reject"],
    "authres": [b"mx.example.com; spf=pass smtp.mailfrom=a@b.example",
                b"(comment) \"quoted id\" ; dkim=fail", b"mx.fuzz.example; none",
                b"Authentication-Results: MX.FUZZ.EXAMPLE.; x\nAuthentication-Results: "
                b"sub.mx.fuzz.example; y\nOther: z", b"\"unterminated; a\x01b\x01c",
                b"a (nested (comment) \\) x\x01\"q\\\"\x01)"],
    "dkim_tags": [_SIGNATURE_VALUE, ED_RECORD, b"v=1; a=rsa-sha256; d=x; s=y; b=; bh=",
                  b"a=b; a=c", b"=x", b"  k = ed25519 ; p = ab cd  ; ", b";;;"],
    "dkim_verify": [b"\x00" + _SIGNATURE_VALUE, b"\x01" + ED_RECORD,
                    b"\x01v=DKIM1; k=rsa; p=MFwwDQYJKoZIhvcNAQEBBQADSwAwSAJBAK",
                    b"\x02\x00\x30 tampered", b"\x03\x01\x00X",
                    b"\x04From: other@evil.example\x00DKIM-Signature: v=1; d=x",
                    b"\x05appended text\r\n"],
    "config_text": [config.render_defaults_toml().encode(),
                    b"[milter]\nauthserv_id = \"mx.example\"\n[policy]\n"
                    b"reject_reply = \"550 5.7.1 {domain} {failed}\"\n",
                    b"[dns]\nnameservers = [\"127.0.0.1:5353\", \"[::1]:53\"]\n"
                    b"timeout = \"500ms\"\n",
                    b"[policy]\ndomain_overrides = { \"example.com\" = \"reject\" }\n"],
    "spf": [b"\xc0\x00\x02\x01\x00v=spf1 ip4:192.0.2.0/24 -all\x00\x00user\x00mail.fuzz.example",
            b"\xc0\x00\x02\x09\x00v=spf1 include:inc.fuzz.example a mx ptr ~all\x00v=spf1 -all",
            b"\x01\x02\x03\x04\x00v=spf1 exists:%{ir}.%{l1r+-}.%{d} redirect=%{d2}\x00\x00a.b-c",
            b"\xc0\x00\x02\x01\x00v=spf1 include:slow.fuzz.example include:broken.fuzz.example",
            b"\x20\x01\x0d\xb8" + b"\x00" * 12 + b"\x00v=spf1 ip6:2001:db8::/32 -all"],
    "pipeline": [SIGNED_MESSAGE, SIGNED_WITH_LENGTH + b"appended\r\n",
                 b"TLS:TLSv1.3\r\nX-Injected: yes|a;b (c|99999999999|OK\n" + SIGNED_MESSAGE,
                 b"From: a@fuzz.example, b@other.example\r\nFrom: c@slow.example\r\n\r\nx\r\n",
                 b"Authentication-Results: mx.fuzz.example; dkim=pass\r\n" + SIGNED_MESSAGE],
}

