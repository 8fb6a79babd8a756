"""Configuration: defaults, validation errors that name the key, and the generated docs."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from mailsec_milter.config import (
    DEFAULT_SOCKET,
    KEYS,
    ConfigError,
    Settings,
    load_settings,
    parse_duration,
    parse_size,
    render_defaults_markdown,
    render_defaults_toml,
    settings_from_mapping,
)

REPO = Path(__file__).resolve().parents[2]


def test_embedded_defaults_listen_on_loopback() -> None:
    settings = Settings.defaults()
    assert settings.socket == DEFAULT_SOCKET
    assert settings.socket.endswith("@127.0.0.1")
    assert settings.dns_timeout == 5.0
    assert settings.nameservers == ()
    assert settings.authserv_id  # falls back to the host's FQDN


def test_print_defaults_round_trips_to_the_same_settings(tmp_path: Path) -> None:
    path = tmp_path / "defaults.toml"
    path.write_text(render_defaults_toml())
    assert load_settings(path) == Settings.defaults()


def test_every_key_is_documented_in_print_defaults() -> None:
    text = render_defaults_toml()
    for key in KEYS:
        assert f"\n{key.name} = " in text, key.dotted


@pytest.mark.parametrize(
    ("document", "expected"),
    [
        ({"dns": {"timout": "5s"}}, "unknown key [dns] timout (did you mean timeout?)"),
        ({"dnss": {}}, "unknown section [dnss] (did you mean dns?)"),
        ({"dns": {"timeout": 5}}, "[dns] timeout: expected a duration string"),
        ({"dns": {"timeout": "5 parsecs"}}, "[dns] timeout: bad duration"),
        ({"dns": {"timeout": "5w"}}, "[dns] timeout: bad duration"),
        ({"dns": {"timeout": "600s"}}, "[dns] timeout: 600s is out of range"),
        ({"dns": {"nameservers": "127.0.0.1"}}, "[dns] nameservers: expected a list"),
        ({"dns": {"nameservers": ["300.1.1.1"]}}, "[dns] nameservers:"),
        ({"dns": {"nameservers": ["127.0.0.1:99999"]}}, "[dns] nameservers:"),
        ({"milter": {"socket": "tcp:25"}}, "[milter] socket: bad socket"),
        ({"milter": {"socket": "inet:port@host"}}, "[milter] socket: bad port"),
        ({"milter": {"socket": "unix:relative/path"}}, "[milter] socket: unix socket path"),
        ({"milter": {"authserv_id": "bad id; x"}}, "[milter] authserv_id"),
        ({"milter": {"max_body_bytes": "12X"}}, "[milter] max_body_bytes: bad size"),
        ({"dkim": {"max_signatures": 0}}, "[dkim] max_signatures: 0 is out of range"),
        ({"dkim": {"max_signatures": True}}, "[dkim] max_signatures: expected a whole number"),
        ({"spf": {"check_helo": "yes"}}, "[spf] check_helo: expected true or false"),
        ({"policy": {"tempfail_reply": "550 5.7.1 no"}}, "must be a 4xx code"),
        ({"policy": {"tempfail_reply": "451 5.7.1 no"}}, "disagree"),
        ({"policy": {"on_internal_error": "ignore"}}, "[policy] on_internal_error: expected one"),
        ({"milter": []}, "[milter] must be a table"),
    ],
)
def test_bad_values_name_the_key_and_the_problem(document: dict[str, object],
                                                  expected: str) -> None:
    with pytest.raises(ConfigError) as info:
        settings_from_mapping(document)  # type: ignore[arg-type]
    assert expected in str(info.value)


def test_valid_values_are_typed() -> None:
    settings = settings_from_mapping({
        "milter": {"socket": "unix:/run/mailsec/milter.sock", "authserv_id": "mx.example.org",
                   "message_deadline": "1500ms", "max_body_bytes": "2M"},
        "dns": {"nameservers": ["127.0.0.1:5353", "::1", "[::1]:53"], "timeout": "2s"},
    })
    assert settings.message_deadline == 1.5
    assert settings.max_body_bytes == 2 * 1024 * 1024
    assert settings.nameservers == ("127.0.0.1:5353", "::1", "[::1]:53")
    assert settings.authserv_id == "mx.example.org"


def test_units() -> None:
    assert parse_duration("250ms") == 0.25
    assert parse_duration("2m") == 120
    assert parse_size("32K") == 32768
    with pytest.raises(ValueError):
        parse_duration("10")


def test_syntax_errors_and_missing_files_are_config_errors(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text("[milter\nsocket = 1\n")
    with pytest.raises(ConfigError, match="TOML syntax error"):
        load_settings(bad)
    with pytest.raises(ConfigError, match="cannot read"):
        load_settings(tmp_path / "missing.toml")


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "mailsec_milter", *args],
                          capture_output=True, text=True, timeout=60, check=False)


def test_check_config_command(tmp_path: Path) -> None:
    good = tmp_path / "good.toml"
    good.write_text('[dns]\nnameservers = ["127.0.0.1:53"]\n')
    assert _cli("check-config", str(good)).returncode == 0
    bad = tmp_path / "bad.toml"
    bad.write_text('[dns]\ntimeout = "fast"\n')
    result = _cli("check-config", str(bad))
    assert result.returncode == 2
    assert "[dns] timeout" in result.stderr and "bad duration" in result.stderr


def test_configuration_doc_matches_the_code() -> None:
    doc = (REPO / "docs" / "CONFIGURATION.md").read_text()
    assert render_defaults_markdown() in doc, (
        "docs/CONFIGURATION.md is stale: regenerate the table with "
        "`mailsec-milter print-defaults --markdown`")
