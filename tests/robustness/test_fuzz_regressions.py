"""Every crash the fuzzers found, as a regression test (and the bug it was).

Inputs that came from a fuzzer are kept byte for byte; each test names the fix.
"""

from __future__ import annotations

import string
from pathlib import Path

import pytest

from fuzz import targets
from mailsec_milter import config
from mailsec_milter.checks.spf import SpfIdentity, check_spf
from mailsec_milter.dns import StaticResolver
from mailsec_milter.model import AuthResult
from mailsec_milter.policy import _fill

# --- checks/spf.py: lone surrogates in the envelope -------------------------------------------

# atheris (fuzz_spf), 2.5 s into the first bounded run: a MAIL FROM local part of undecodable
# bytes (pymilter hands them over as lone surrogates) and a record with an upper-case macro,
# which pyspf URL-escapes with urllib.parse.quote -> UnicodeEncodeError out of check_spf. In the
# milter that is a crashed check: temperror, and the message tempfailed by on_internal_error.
SPF_CRASH = (b"\x11\x02\x02\x04\x00v=spf1 exists:.%{L1r+-}.%{d} red%rdct=%{d.}\x00}\x00"
             b"\xa4\xa4\xa4\xa4\xa4\xa4\xa4\xa4\xa4\xa4\xa4\x00.ba-c")


def test_spf_crash_input_from_atheris() -> None:
    targets.target_spf(SPF_CRASH)


@pytest.mark.parametrize("macro", ["%{L}", "%{S}", "%{l}", "%{s}", "%{H}", "%{O}"])
@pytest.mark.parametrize("identity", [SpfIdentity.MAILFROM, SpfIdentity.HELO])
def test_spf_surrogates_in_identities(macro: str, identity: SpfIdentity) -> None:
    """Fixed in checks/spf.py (_without_surrogates): each surrogate becomes U+FFFD."""
    zone = StaticResolver.from_zone_text(
        f'sur.example. TXT "v=spf1 exists:{macro}.x.sur.example ip4:192.0.2.0/24 -all"\n'
        'mail.sur.example. TXT "v=spf1 exists:%{H}.x.sur.example -all"\n')
    outcome = check_spf(zone, "192.0.2.1", identity, "\udca4\udcff@sur.example",
                        "mail.sur.example", "mx.test.example")
    assert outcome.result in (AuthResult.PASS, AuthResult.FAIL)
    helo = check_spf(zone, "192.0.2.1", SpfIdentity.HELO, "", "mail.\udcff.example",
                     "mx.test.example")
    assert helo.result in frozenset(AuthResult)


# --- config.py ---------------------------------------------------------------------------------


def test_deeply_nested_toml_is_a_config_error(tmp_path: Path) -> None:
    """tomllib recurses once per nesting level: RecursionError escaped load_settings (found
    writing the config target; test_settings_from_toml's strategy hits it against the old code).
    Fixed: settings_from_toml maps it to ConfigError."""
    path = tmp_path / "deep.toml"
    path.write_text("a = " + "[" * 5000 + "]" * 5000 + "\n")
    with pytest.raises(config.ConfigError, match="nested too deeply"):
        config.load_settings(path)
    with pytest.raises(config.ConfigError):
        config.settings_from_toml("x = " + "{ y = " * 3000 + "1" + " }" * 3000)


@pytest.mark.parametrize("template", [
    "550 5.7.1 {domain!x}",  # ValueError at the first reject: "Unknown conversion specifier"
    "550 5.7.1 {domain:d}",  # ValueError: "Unknown format code 'd'"
    "550 5.7.1 {domain:{failed}}",  # the format spec taken from the sender's data
    "550 5.7.1 {domain:>999999999999}",  # MemoryError (or a 1 TB string) per rejected message
    "550 5.7.1 {domain!r}",  # legal, but puts Python quoting into an SMTP reply
])
def test_reply_templates_take_only_plain_placeholders(template: str) -> None:
    """Accepted by the loader, then raising or allocating without bound in policy._fill at the
    end of a message (found writing the config target; the settings_from_mapping property
    test finds it against the old loader within its 500 examples). Fixed:
    _check_template refuses conversions and format specs and tries the template once."""
    with pytest.raises(config.ConfigError, match="reject_reply"):
        config.settings_from_mapping({"policy": {"reject_reply": template}}, lambda: "h")


@pytest.mark.parametrize("text", ["451 4.7.0 try\rlater", "451 4.7.0 try\x00later",
                                  "451 4.7.0 caf\u00e9", "451 4.\u0667.0 later",
                                  "451\n4.7.0 later"])
def test_reply_texts_are_printable_ascii(text: str) -> None:
    """libmilter's smfi_setreply refuses CR/LF, so a reply with one failed at the end of every
    message it was used for; non-ASCII digits matched \\d in the status."""
    with pytest.raises(config.ConfigError, match="tempfail_reply"):
        config.settings_from_mapping({"policy": {"tempfail_reply": text}}, lambda: "h")


def test_good_templates_still_load() -> None:
    settings = config.settings_from_mapping({"policy": {
        "reject_reply": "550 5.7.1 {domain} failed ({failed}) see {{docs}} 100%"}}, lambda: "h")
    filled = _fill(settings.reject_reply, "example.com", "spf=fail")
    assert filled.text == "example.com failed (spf=fail) see {docs} 100%"


@pytest.mark.parametrize(("section", "key", "value"), [
    ("milter", "authserv_id", "mx.example.com\n"),  # "$" matched before a final newline
    ("policy", "quarantine_header", "X-Quarantine\n"),
    ("milter", "socket", "inet:\u0663@127.0.0.1"),  # "٣".isdigit() and int("٣") == 3
    ("milter", "socket", "inet:\u00b2@127.0.0.1"),  # "²".isdigit(), int("²") raises
    ("milter", "socket_mode", "0660\n"),
    ("metrics", "listen", "127.0.0.1:\u0669\u0668\u0669\u0664"),  # "٩٨٩٤" read as 9894
])
def test_values_with_a_trailing_newline_or_non_ascii_digits(section: str, key: str,
                                                            value: str) -> None:
    with pytest.raises(config.ConfigError):
        config.settings_from_mapping({section: {key: value}}, lambda: "h")


def test_every_printable_template_character_is_handled() -> None:
    """One pass over every printable character in a template: a Settings or a ConfigError."""
    for char in string.printable:
        try:
            settings = config.settings_from_mapping(
                {"policy": {"reject_reply": f"550 5.7.1 a{char}b {{domain}}"}}, lambda: "h")
        except config.ConfigError:
            continue
        _fill(settings.reject_reply, "d", "f")


# --- checks/dkim.py: the cost of an attacker's RSA key -------------------------------------------


def test_rsa_key_cost_is_bounded() -> None:
    """Found reading dkimpy under the DKIM fuzz target: its RSA is a pure pow() over a key of
    any size from the signer's DNS. The regression cases are test_hostile_messages.py
    test_malformed_keys (key14, key15) and test_rsa_keys_cost_bounded_with_many_signatures."""
    from mailsec_milter.checks.dkim import rsa_cost_problem

    assert rsa_cost_problem({"modulus": (1 << 16384) - 1, "publicExponent": 65537}) == ""
    assert "over 16384" in rsa_cost_problem({"modulus": 1 << 16400, "publicExponent": 3})
    assert "exponent" in rsa_cost_problem({"modulus": (1 << 4096) - 1,
                                            "publicExponent": (1 << 4096) - 1})
    assert rsa_cost_problem({"modulus": (1 << 3072) - 1, "publicExponent": (1 << 3072) - 1}) == ""
    assert rsa_cost_problem(b"ed25519 key") == "not an RSA public key"


# --- the fuzz targets themselves -------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(targets.SEEDS))
def test_every_seed_passes_its_target(name: str) -> None:
    for seed in targets.SEEDS[name]:
        targets.TARGETS[name](seed)


def test_the_dkim_fixture_verifies() -> None:
    """A target whose signed message did not verify would fuzz only the failure paths."""
    assert targets._check_dkim(targets.SIGNED_MESSAGE).signatures[0].result is AuthResult.PASS
    outcome = targets._check_dkim(targets.SIGNED_WITH_LENGTH + b"more\r\n")
    assert outcome.signatures[0].result is AuthResult.POLICY
