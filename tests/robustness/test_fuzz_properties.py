"""Hypothesis property tests of every parser we own, through the same targets the atheris
harnesses use (fuzz/targets.py): raw bytes for breadth, structured strategies to get deep
(valid-looking From lists, DKIM tag lists, DMARC and SPF records, TOML tables, messages).

Each target asserts its own properties (never an unexpected exception; config: only
ConfigError; outputs well formed: a rendered A-R has no CR, line breaks only as folding, no
stray ``;``). Bounded: a fixed number of examples each, no deadline (the CI machine is slow
and shared), derandomised under CI so a failure reproduces.
"""

from __future__ import annotations

import os
import string
import tempfile
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fuzz import targets
from mailsec_milter import config
from tests.support.conformance import in_ci

SETTINGS = settings(max_examples=500, deadline=None, derandomize=in_ci(),
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                           HealthCheck.filter_too_much])
FEW = settings(SETTINGS, max_examples=300)

# --- building blocks -----------------------------------------------------------------------

ATOM = st.text(alphabet=string.ascii_letters + string.digits + "!#$%&'*+-/=?^_`{|}~",
               min_size=1, max_size=12)
LABEL = st.one_of(
    st.text(alphabet=string.ascii_lowercase + string.digits + "-_", min_size=1, max_size=12),
    st.sampled_from(["xn--bcher-kva", "bücher", "EXAMPLE", "a" * 64, "", "-x-", "123"]),
    st.text(max_size=5),
)
DOMAIN = st.lists(LABEL, min_size=1, max_size=5).map(".".join)
SPECIAL = st.sampled_from([*'()<>[]:;@\\,."', " ", "\t", "\r\n ", "\x00", "=?utf-8?q?x?="])
MAILBOX = st.one_of(
    st.builds(lambda a, d: f"{a}@{d}", ATOM, DOMAIN),
    st.builds(lambda n, a, d: f'"{n}" <{a}@{d}>', st.text(max_size=10), ATOM, DOMAIN),
    st.builds(lambda c, a, d: f"({c}) {a}@{d}", st.text(max_size=10), ATOM, DOMAIN),
    st.builds(lambda g, a, d: f"{g}: {a}@{d};", ATOM, ATOM, DOMAIN),
    st.builds(lambda r, a, d: f"<@{r}:{a}@{d}>", DOMAIN, ATOM, DOMAIN),
)
FROM_VALUE = st.lists(st.one_of(MAILBOX, SPECIAL, st.text(max_size=6)), max_size=8).map(
    lambda parts: " ".join(parts) if len(parts) % 3 else ", ".join(parts))


def joined(values: list[str]) -> bytes:
    return b"\x00".join(v.encode("utf-8", "surrogatepass") for v in values)


TAG_NAME = st.one_of(st.sampled_from(["v", "a", "b", "bh", "c", "d", "h", "i", "l", "q", "s",
                                      "t", "x", "z", "k", "p", "n", "g", "A", "D", "1x", ""]),
                     st.text(alphabet=string.ascii_letters + "_0", max_size=4))
TAG_VALUE = st.one_of(
    st.sampled_from(["1", "rsa-sha256", "ed25519-sha256", "rsa-sha1", "relaxed/simple",
                     "simple", "sender.example", "fuzz.example", "ed", "from:to", "from",
                     "dns/txt", "0", "99999999999999999999", "-1", "YQ==", "", " ", "@fuzz.example",
                     targets.ED_PUBLIC, "ed25519", "rsa", "email", "*", "s", "y", "sha256"]),
    st.text(max_size=20),
)
TAG_LIST = st.lists(st.tuples(TAG_NAME, st.sampled_from(["=", " = ", "=\r\n "]), TAG_VALUE),
                    max_size=12).map(lambda tags: "; ".join(n + e + v for n, e, v in tags))

# --- model.parse_message ------------------------------------------------------------------

LINE_END = st.sampled_from(["\r\n", "\n", "\r", "\r\r\n"])
HEADER_LINE = st.one_of(
    st.builds(lambda n, v, e: f"{n}:{v}{e}", st.text(max_size=12), st.text(max_size=30), LINE_END),
    st.builds(lambda v, e: f" {v}{e}", st.text(max_size=20), LINE_END),
    st.builds(lambda v, e: f"\t{v}{e}", st.text(max_size=20), LINE_END),
)
RAW_MESSAGE = st.builds(lambda lines, sep, body: "".join(lines) + sep + body,
                        st.lists(HEADER_LINE, max_size=12), st.sampled_from(["\r\n", "\n", ""]),
                        st.text(max_size=60)).map(lambda t: t.encode("utf-8", "surrogatepass"))


@SETTINGS
@given(st.one_of(st.binary(max_size=600), RAW_MESSAGE))
def test_parse_message(data: bytes) -> None:
    targets.target_parse_message(data)


# --- addresses.author_domains --------------------------------------------------------------


@SETTINGS
@given(st.one_of(st.binary(max_size=300),
                 st.lists(FROM_VALUE, min_size=1, max_size=3).map(joined)))
def test_author_domains(data: bytes) -> None:
    targets.target_author_domains(data)


# --- checks.dmarc.parse_record -------------------------------------------------------------

DMARC_TAG = st.sampled_from(["v", "p", "sp", "np", "psd", "t", "adkim", "aspf", "pct", "rua",
                             "ruf", "fo", "rf", "ri", "P", "V", "x", ""])
DMARC_VALUE = st.one_of(st.sampled_from(["DMARC1", "none", "quarantine", "reject", "REJECT",
                                         "y", "n", "u", "r", "s", "100", "0", "101", "-1",
                                         "mailto:a@b.example", "mailto:a@b.example!10m",
                                         "https://x", "", "dmarc1"]),
                        st.text(max_size=10))
DMARC_RECORD = st.lists(st.tuples(DMARC_TAG, st.sampled_from(["=", " = ", "\t=\t"]), DMARC_VALUE),
                        max_size=10).map(lambda tags: "; ".join(n + e + v for n, e, v in tags))


@SETTINGS
@given(st.one_of(st.binary(max_size=200),
                 DMARC_RECORD.map(lambda r: r.encode("utf-8", "surrogatepass")),
                 DMARC_RECORD.map(lambda r: f"v=DMARC1; {r}".encode("utf-8", "surrogatepass"))))
def test_dmarc_record(data: bytes) -> None:
    targets.target_dmarc_record(data)


# --- authres -------------------------------------------------------------------------------

AR_TEXT = st.one_of(st.text(max_size=80), st.sampled_from([
    "mx.fuzz.example; spf=pass", "(c) mx.fuzz.example; x", '"mx.fuzz.example"; y',
    "MX.FUZZ.EXAMPLE.; z", "sub.mx.fuzz.example", '"unterminated', "(unterminated", "\\",
    '"a\\"b"', "((()))", ";", ""]))


@SETTINGS
@given(st.one_of(st.binary(max_size=300),
                 st.lists(AR_TEXT, min_size=1, max_size=4).map(
                     lambda parts: "\x01".join(parts).encode("utf-8", "surrogatepass")),
                 st.lists(AR_TEXT, max_size=6).map(
                     lambda vs: "\n".join(f"Authentication-Results:{v}" for v in vs).encode(
                         "utf-8", "surrogatepass"))))
def test_authres(data: bytes) -> None:
    targets.target_authres(data)


# --- checks.dkim ---------------------------------------------------------------------------


@SETTINGS
@given(st.one_of(st.binary(max_size=300), TAG_LIST.map(lambda t: t.encode("utf-8", "replace"))))
def test_dkim_tag_list(data: bytes) -> None:
    targets.target_dkim_tags(data)


@SETTINGS
@given(st.one_of(
    st.binary(max_size=300),
    st.tuples(st.integers(0, 5), TAG_LIST).map(
        lambda mt: bytes([mt[0]]) + mt[1].encode("utf-8", "replace")),
    st.tuples(st.integers(2, 3), st.integers(0, 65535), st.binary(max_size=40)).map(
        lambda m: bytes([m[0]]) + m[1].to_bytes(2, "big") + m[2]),
))
def test_dkim_verify_mutations(data: bytes) -> None:
    targets.target_dkim_verify(data)


# --- config: settings_from_mapping, settings_from_toml, load_settings ----------------------

KNOWN_SECTIONS = sorted({key.section for key in config.KEYS})
KNOWN_NAMES = sorted({key.name for key in config.KEYS})
SCALAR = st.one_of(
    st.booleans(), st.integers(-(2**70), 2**70), st.floats(allow_nan=True), st.none(),
    st.sampled_from(["5s", "250ms", "1h", "32M", "0", "inet:8894@127.0.0.1", "unix:/run/x",
                     "127.0.0.1:53", "[::1]:53", "reject", "tempfail", "hold", "rfc7489",
                     "550 5.7.1 {domain} {failed}", "451 4.7.0 later", "550 5.7.1 {domain!r}",
                     "550 5.7.1 {domain:>99999}", "550 5.7.1 %s %%", "X-Tag", "mx.example\n",
                     "192.0.2.0/24", "example.com", "0660", "\u00b2", "\x00", ""]),
    st.text(max_size=20),
)
VALUE = st.recursive(SCALAR, lambda inner: st.one_of(
    st.lists(inner, max_size=4),
    st.dictionaries(st.one_of(st.sampled_from([*KNOWN_NAMES, "example.com"]), st.text(max_size=8)),
                    inner, max_size=4)), max_leaves=10)
TABLE = st.dictionaries(st.one_of(st.sampled_from(KNOWN_NAMES), st.text(max_size=10)), VALUE,
                        max_size=6)
REPLY_TEXT = st.builds(
    lambda code, parts: code + " " + "".join(parts),
    st.sampled_from(["550 5.7.1", "451 4.7.0", "550 4.7.1", "250 2.0.0", "5x0 5.7.1", "550"]),
    st.lists(st.one_of(st.sampled_from(["{domain}", "{failed}", "{domain!x}", "{domain!r}",
                                        "{domain:d}", "{domain:>9}", "{failed:{domain}}",
                                        "{0}", "{}", "{", "}", "{{", "}}", "%", "%%", "\r\n",
                                        "\r", "\x00", "é", "\t"]),
                       st.text(max_size=4)), max_size=6))
ONE_KEY = st.one_of(
    st.builds(lambda key, value: {key.section: {key.name: value}}, st.sampled_from(config.KEYS),
              SCALAR),
    st.builds(lambda name, text: {"policy": {name: text}}, st.sampled_from(list(config.REPLY_KEYS)),
              REPLY_TEXT),
)
MAPPING = st.one_of(
    ONE_KEY,
    st.dictionaries(st.one_of(st.sampled_from(KNOWN_SECTIONS), st.text(max_size=8)),
                    st.one_of(TABLE, SCALAR), max_size=5),
    st.builds(lambda section, table: {section: table}, st.sampled_from(KNOWN_SECTIONS), TABLE),
    VALUE,
)


@SETTINGS
@given(MAPPING)
def test_settings_from_mapping(mapping: object) -> None:
    targets.config_from_mapping(mapping)


def _toml_scalar(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)) and value == value and abs(value) != float("inf"):
        return repr(value)
    text = str(value)
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


TOML_TEXT = st.lists(st.one_of(
    st.sampled_from(KNOWN_SECTIONS).map(lambda s: f"[{s}]"),
    st.builds(lambda k, v: f"{k} = {_toml_scalar(v)}", st.sampled_from(KNOWN_NAMES), SCALAR),
    st.builds(lambda k, v: f"{k} = [{_toml_scalar(v)}]", st.sampled_from(KNOWN_NAMES), SCALAR),
    st.text(max_size=20),
    st.sampled_from(["a = " + "[" * 2000, "x = {", "[[milter]]", "[milter.sub]", "\x00"]),
), max_size=12).map(lambda lines: "\n".join(lines).encode("utf-8", "surrogatepass"))


@SETTINGS
@given(st.one_of(st.binary(max_size=400), TOML_TEXT))
def test_settings_from_toml(data: bytes) -> None:
    targets.target_config_text(data)


@FEW
@given(st.one_of(st.binary(max_size=400), TOML_TEXT))
def test_load_settings_random_files(data: bytes) -> None:
    """The file-reading path (including undecodable bytes): a Settings or a ConfigError."""
    handle, name = tempfile.mkstemp(suffix=".toml")
    try:
        os.write(handle, data)
        os.close(handle)
        try:
            config.load_settings(Path(name))
        except config.ConfigError as exc:
            assert str(exc)
    finally:
        os.unlink(name)


# --- checks.spf.check_spf over StaticResolver ----------------------------------------------

MACRO_LETTER = st.one_of(st.sampled_from("slodiphcrtv"), st.sampled_from("xz"),
                         st.sampled_from("SLODIPHCRTV"))  # upper case: expanded URL-escaped
MACRO = st.builds(lambda letter, digits, reverse, delims: "%{" + letter + digits + reverse
                  + delims + "}", MACRO_LETTER,
                  st.sampled_from(["", "1", "2", "0", "99"]), st.sampled_from(["", "r"]),
                  st.sampled_from(["", ".", "-+", "=_/", ".-+,/_="]))
TARGET = st.one_of(st.sampled_from(["fuzz.example", "inc.fuzz.example", "slow.fuzz.example",
                                    "broken.fuzz.example", "loop.fuzz.example", "nx.example",
                                    "%{d}", "%{d2}.x", "%%", "%_%-", "%"]),
                   st.lists(st.one_of(MACRO, LABEL), min_size=1, max_size=4).map(".".join))
MECHANISM = st.one_of(
    st.builds(lambda q, m, t: f"{q}{m}:{t}", st.sampled_from(["", "+", "-", "~", "?"]),
              st.sampled_from(["a", "mx", "ptr", "exists", "include"]), TARGET),
    st.builds(lambda q, m, c: f"{q}{m}{c}", st.sampled_from(["", "-", "~"]),
              st.sampled_from(["a", "mx", "ptr"]),
              st.sampled_from(["", "/24", "/33", "//64", "/24//0", "/-1", "/999"])),
    st.builds(lambda n: f"ip4:192.0.2.{n % 256}/{n % 40}", st.integers(0, 1000)),
    st.builds(lambda n: f"ip6:2001:db8::{n:x}/{n % 140}", st.integers(0, 1000)),
    st.builds(lambda t: f"redirect={t}", TARGET),
    st.builds(lambda t: f"exp={t}", TARGET),
    st.sampled_from(["all", "-all", "~all", "?all", "+all", "v=spf1", "unknown=x", "=", "a:"]),
    st.text(max_size=8),
)
MACRO_MECHANISM = st.builds(lambda kind, m, rest: f"{kind}:{m}.{rest}",
                            st.sampled_from(["exists", "a", "include", "mx"]), MACRO, TARGET)
SPF_RECORD = st.builds(lambda first, rest: " ".join(["v=spf1", *first, *rest]),
                       st.lists(MACRO_MECHANISM, max_size=2), st.lists(MECHANISM, max_size=10))
LOCAL = st.one_of(  # undecodable bytes arrive from pymilter as lone surrogates
    st.binary(min_size=1, max_size=12).map(lambda b: b.decode("utf-8", "surrogateescape")),
    ATOM, st.text(max_size=10))


def _spf_input(ip: bytes, record: str, included: str, local: str, helo: str) -> bytes:
    def raw(text: str) -> bytes:
        return text.encode("utf-8", "surrogateescape").replace(b"\x00", b"")

    return b"\x00".join([ip.replace(b"\x00", b"\x01"), raw(record), raw(included), raw(local),
                         raw(helo)])


@SETTINGS
@given(st.one_of(
    st.binary(max_size=200),
    st.builds(_spf_input, st.sampled_from([b"\xc0\x00\x02\x01", b"\xc6\x33\x64\x01",
                                           b"\x20\x01\x0d\xb8" + b"\x01" * 12]),
              SPF_RECORD, SPF_RECORD, LOCAL, st.one_of(DOMAIN, st.sampled_from(
                  ["", "[192.0.2.1]", "fuzz.example", "mail.fuzz.example"]))),
))
def test_check_spf(data: bytes) -> None:
    targets.target_spf(data)


# --- the whole pure pipeline ---------------------------------------------------------------

OTHER_HEADER = st.sampled_from([
    "Authentication-Results: mx.fuzz.example; dkim=pass", "Authentication-Results: (x) \"mx",
    "Received: from x by y", "Subject: =?utf-8?q?caf=C3=A9?=", "Sender: a@fuzz.example",
    "Reply-To: b@other.example", "X-Mailsec-Quarantine: yes",
])
HEADER = st.one_of(
    FROM_VALUE.map(lambda v: f"From: {v}"),
    TAG_LIST.map(lambda t: f"DKIM-Signature: {t}"),
    OTHER_HEADER,
)
TLS_LINE = st.one_of(st.just(""), st.builds(
    lambda v, c, b, r: f"TLS:{v}|{c}|{b}|{r}\n", st.text(max_size=12), st.text(max_size=12),
    st.sampled_from(["256", "", "99999999999", "x"]), st.text(max_size=6)))
PIPELINE_MESSAGE = st.builds(
    lambda tls, headers, top, body: (tls + top + "\r\n".join(headers) + "\r\n\r\n" + body).encode(
        "utf-8", "surrogatepass"),
    TLS_LINE, st.lists(HEADER, max_size=6), st.sampled_from(["", "From: a@fuzz.example\r\n"]),
    st.text(max_size=40))


@FEW
@given(st.one_of(
    PIPELINE_MESSAGE,
    st.binary(max_size=300),
    st.binary(max_size=60).map(lambda b: b + targets.SIGNED_MESSAGE),
    st.tuples(st.integers(0, len(targets.SIGNED_MESSAGE)), st.binary(max_size=20)).map(
        lambda m: targets.SIGNED_MESSAGE[:m[0]] + m[1] + targets.SIGNED_MESSAGE[m[0]:]),
))
def test_pipeline(data: bytes) -> None:
    targets.target_pipeline(data)
