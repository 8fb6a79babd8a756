"""DKIM vectors from outside the project, verified through check_dkim and a StaticResolver.

1. RFC 8463 Appendix A (``dkim/rfc8463-appendix-a/``): one message signed twice, ed25519-sha256
   with selector ``brisbane`` and rsa-sha256 (1024-bit) with selector ``test``, both under
   ``football.example.com``. Both must pass; a one-byte change to the body, to a signed header
   (Subject), or another key must make both fail.
2. dkimpy 1.1.8's test data (``dkim/dkimpy/data/``): the signed messages with the key each one
   names in its DKIM-Signature (d=/s=), and the unsigned messages signed here with the private
   keys shipped next to them, verified against the shipped key records (good and bad ones).
"""

from __future__ import annotations

import base64
import subprocess
from pathlib import Path

import dkim
import nacl.encoding
import nacl.signing
import pytest

from mailsec_milter.checks.dkim import DkimOutcome, DkimSettings, check_dkim
from mailsec_milter.dns import StaticResolver
from mailsec_milter.model import AuthResult, Envelope, MessageSnapshot, parse_message
from tests.support.conformance import conformance_dir, missing_suite
from tests.support.dkimkeys import ed25519_key, rsa_key, zone_line

pytestmark = pytest.mark.conformance

APPENDIX = "dkim/rfc8463-appendix-a"
DKIMPY = "dkim/dkimpy/data"


def _dir(relative: str) -> Path:
    path = conformance_dir() / relative
    if not path.is_dir():
        missing_suite(path)
    return path


def _verify(raw: bytes, zone: str) -> DkimOutcome:
    headers, body = parse_message(raw)
    snapshot = MessageSnapshot(Envelope("192.0.2.1"), headers, body)
    return check_dkim(StaticResolver.from_zone_text(zone), snapshot, DkimSettings())


def _by_selector(outcome: DkimOutcome) -> dict[str, AuthResult]:
    return {s.selector: s.result for s in outcome.signatures}


# --- RFC 8463 Appendix A ---------------------------------------------------------------------

def _appendix_records(path: Path) -> dict[str, str]:
    """``dns-records.txt`` holds ``<name> <record text>`` lines (A.2)."""
    records = {}
    for line in (path / "dns-records.txt").read_text().splitlines():
        if line.strip():
            name, text = line.split(None, 1)
            records[name.rstrip(".").lower()] = text.strip()
    return records


def _zone(records: dict[str, str]) -> str:
    return "\n".join(zone_line(name, text) for name, text in records.items())


@pytest.fixture(scope="module")
def appendix() -> tuple[bytes, dict[str, str]]:
    path = _dir(APPENDIX)
    return (path / "signed-message.eml").read_bytes(), _appendix_records(path)


ED_NAME = "brisbane._domainkey.football.example.com"
RSA_NAME = "test._domainkey.football.example.com"


def test_appendix_a_records_are_the_two_keys(appendix: tuple[bytes, dict[str, str]]) -> None:
    _, records = appendix
    assert set(records) == {ED_NAME, RSA_NAME}
    assert "k=ed25519" in records[ED_NAME]
    assert "k=rsa" in records[RSA_NAME]


def test_appendix_a_ed25519_private_key_matches_its_record(
        appendix: tuple[bytes, dict[str, str]]) -> None:
    _, records = appendix
    seed = (_dir(APPENDIX) / "ed25519-brisbane.private.b64").read_text().strip()
    signing = nacl.signing.SigningKey(seed.encode(), encoder=nacl.encoding.Base64Encoder)
    public = signing.verify_key.encode(encoder=nacl.encoding.Base64Encoder).decode()
    assert f"p={public}" in records[ED_NAME]


def test_appendix_a_rsa_private_key_matches_its_record(
        appendix: tuple[bytes, dict[str, str]]) -> None:
    _, records = appendix
    der = subprocess.run(
        ["openssl", "rsa", "-pubout", "-outform", "DER"],
        input=(_dir(APPENDIX) / "rsa-test.private.pem").read_bytes(),
        check=True, capture_output=True,
    ).stdout
    assert f"p={base64.b64encode(der).decode()}" in records[RSA_NAME]


def test_appendix_a_both_signatures_pass(appendix: tuple[bytes, dict[str, str]]) -> None:
    raw, records = appendix
    outcome = _verify(raw, _zone(records))
    assert [(s.selector, s.algorithm) for s in outcome.signatures] == [
        ("brisbane", "ed25519-sha256"), ("test", "rsa-sha256")]
    assert _by_selector(outcome) == {"brisbane": AuthResult.PASS, "test": AuthResult.PASS}
    assert {s.domain for s in outcome.signatures} == {"football.example.com"}
    assert [s.key_bits for s in outcome.signatures] == [256, 1024]


def _change_one_byte(raw: bytes, old: bytes, new: bytes) -> bytes:
    assert len(old) == len(new) and raw.count(old) == 1
    changed = raw.replace(old, new)
    assert sum(a != b for a, b in zip(raw, changed, strict=True)) == 1
    return changed


def test_appendix_a_one_byte_body_change_fails_both(
        appendix: tuple[bytes, dict[str, str]]) -> None:
    raw, records = appendix
    changed = _change_one_byte(raw, b"We lost the game.", b"We lost the gamE.")
    outcome = _verify(changed, _zone(records))
    assert _by_selector(outcome) == {"brisbane": AuthResult.FAIL, "test": AuthResult.FAIL}
    assert all("body" in s.comment for s in outcome.signatures)


def test_appendix_a_one_byte_subject_change_fails_both(
        appendix: tuple[bytes, dict[str, str]]) -> None:
    raw, records = appendix
    changed = _change_one_byte(raw, b"Subject: Is dinner ready?", b"Subject: Is dinner ready!")
    outcome = _verify(changed, _zone(records))
    assert _by_selector(outcome) == {"brisbane": AuthResult.FAIL, "test": AuthResult.FAIL}
    assert all("body" not in s.comment for s in outcome.signatures)


def test_appendix_a_other_keys_fail_both(appendix: tuple[bytes, dict[str, str]]) -> None:
    raw, _ = appendix
    other = {ED_NAME: ed25519_key(b"\x07" * 32).record(), RSA_NAME: rsa_key(1024).record()}
    outcome = _verify(raw, _zone(other))
    assert _by_selector(outcome) == {"brisbane": AuthResult.FAIL, "test": AuthResult.FAIL}


def test_appendix_a_keys_swapped_are_permerror(appendix: tuple[bytes, dict[str, str]]) -> None:
    raw, records = appendix
    swapped = {ED_NAME: records[RSA_NAME], RSA_NAME: records[ED_NAME]}
    outcome = _verify(raw, _zone(swapped))
    assert _by_selector(outcome) == {"brisbane": AuthResult.PERMERROR,
                                     "test": AuthResult.PERMERROR}


def test_appendix_a_resigned_with_the_published_private_keys_passes(
        appendix: tuple[bytes, dict[str, str]]) -> None:
    raw, records = appendix
    unsigned = raw[raw.index(b"From: "):]
    path = _dir(APPENDIX)
    signed = unsigned
    for selector, key, algorithm in (
        (b"test", (path / "rsa-test.private.pem").read_bytes(), b"rsa-sha256"),
        (b"brisbane", (path / "ed25519-brisbane.private.b64").read_bytes().strip(),
         b"ed25519-sha256"),
    ):
        signed = dkim.sign(signed, selector, b"football.example.com", key,
                           signature_algorithm=algorithm,
                           include_headers=[b"from", b"to", b"subject", b"date", b"message-id"],
                           canonicalize=(b"relaxed", b"relaxed")) + signed
    outcome = _verify(signed, _zone(records))
    assert _by_selector(outcome) == {"brisbane": AuthResult.PASS, "test": AuthResult.PASS}


# --- dkimpy's test data: signed messages -------------------------------------------------------

RFC8463_ED_RECORD = "v=DKIM1; k=ed25519; p=11qYAYKxCrfVS/7TyWQHOg7hcvPapiMlrwIaaPcHURo="

# message file -> (key records: name -> record file or literal, expected result per selector)
SIGNED = {
    # rfc6376.signed.msg: RFC 8463 A.3 signed with c=simple/simple, both keys of Appendix A.
    "rfc6376.signed.msg": (
        {ED_NAME: RFC8463_ED_RECORD, RSA_NAME: "test.txt"},
        {"brisbane": AuthResult.PASS, "test": AuthResult.PASS},
    ),
    "rfc6376.signed.rsa.msg": ({RSA_NAME: "test.txt"}, {"test": AuthResult.PASS}),
    # Same b= as rfc6376.signed.rsa.msg but t= removed and x= added: the signed tag list changed.
    "rfc6376.signed.no_t.msg": ({RSA_NAME: "test.txt"}, {"test": AuthResult.FAIL}),
    # Exim-made ed25519 signature, degenerate folding (a line that is just "\t; s=sed").
    "ed25519test2.msg": ({"sed._domainkey.test.ex": "eximtest.dns"}, {"sed": AuthResult.PASS}),
    # d=legitimate.com(.attacker.com: not a domain; must never pass, whatever DNS says.
    "test.message.baddomain": (
        {"test._domainkey.legitimate.com": "test.txt",
         "test._domainkey.attacker.com": "test.txt"},
        {"test": AuthResult.PERMERROR},
    ),
}


def _record(data: Path, value: str) -> str:
    return (data / value).read_text().strip() if value.endswith((".txt", ".dns")) else value


@pytest.mark.parametrize("message", list(SIGNED), ids=list(SIGNED))
def test_dkimpy_signed_message(message: str) -> None:
    data = _dir(DKIMPY)
    records, expected = SIGNED[message]
    zone = "\n".join(zone_line(name, _record(data, value)) for name, value in records.items())
    outcome = _verify((data / message).read_bytes(), zone)
    assert _by_selector(outcome) == expected, outcome


# --- dkimpy's test data: sign the unsigned messages with the shipped private keys ---------------

# (message, private key file, algorithm, key record file, expected result)
SIGN_AND_VERIFY = [
    ("ed25519test.msg", "ed25519test.key", "ed25519-sha256", "ed25519test.dns", AuthResult.PASS),
    ("test.message", "rfc8032_7_1.key", "ed25519-sha256", "ed25519test.dns", AuthResult.FAIL),
    ("test.message", "test.private", "rsa-sha256", "test.txt", AuthResult.PASS),
    ("test.message", "test.private", "rsa-sha256", "test2.txt", AuthResult.PASS),  # no k=
    ("test2.message", "test2.private", "rsa-sha256", "test2.txt", AuthResult.PASS),
    ("test_extra.message", "test.private", "rsa-sha256", "test.txt", AuthResult.PASS),
    # test_bad.txt: the last bytes of p= are damaged, so the key itself does not parse.
    ("test.message", "test.private", "rsa-sha256", "test_bad.txt", AuthResult.PERMERROR),
    ("test.message", "test.private", "rsa-sha256", "badk.txt", AuthResult.PERMERROR),
    ("test.message", "test.private", "rsa-sha256", "badversion.txt", AuthResult.PERMERROR),
    ("test.message", "test.private", "rsa-sha256", "test_tlsrpt.txt", AuthResult.PERMERROR),
    ("test.message", "test.private", "rsa-sha1", "test.txt", AuthResult.POLICY),
    ("test.message", "1024_testkey.key", "rsa-sha256", "1024_testkey_wo_markers.pub.txt",
     AuthResult.PASS),
    ("test.message", "1024_testkey.key", "rsa-sha256", "1024_testkey_wo_markers.pub.rsa.txt",
     AuthResult.PASS),
    ("test.message", "2048_testkey.key", "rsa-sha256", "2048_testkey_wo_markers.pub.txt",
     AuthResult.PASS),
    ("test.message", "2048_testkey.key", "rsa-sha256", "2048_testkey_wo_markers.pub.rsa.txt",
     AuthResult.PASS),
    ("test.message", "2048_testkey_PKCS8.key", "rsa-sha256", "2048_testkey_PKCS8.key.pub.txt",
     AuthResult.PASS),
    ("test.message", "2048_testkey.key", "rsa-sha256", "1024_testkey_wo_markers.pub.txt",
     AuthResult.FAIL),
    ("message.mbox", "test.private", "rsa-sha256", "test.txt", AuthResult.PASS),
]


@pytest.mark.parametrize(
    ("message", "private", "algorithm", "record", "expected"), SIGN_AND_VERIFY,
    ids=[f"{m}-{p}-{a}-{r}" for m, p, a, r, _ in SIGN_AND_VERIFY],
)
def test_dkimpy_keys_sign_and_verify(message: str, private: str, algorithm: str, record: str,
                                     expected: AuthResult) -> None:
    data = _dir(DKIMPY)
    raw = (data / message).read_bytes()
    key = (data / private).read_bytes().strip()
    header = dkim.sign(raw, b"test", b"example.com", key,
                       signature_algorithm=algorithm.encode(),
                       include_headers=[b"from", b"subject", b"date", b"to"])
    zone = zone_line("test._domainkey.example.com", (data / record).read_text().strip())
    outcome = _verify(header + raw, zone)
    assert [s.result for s in outcome.signatures][:1] == [expected], outcome
