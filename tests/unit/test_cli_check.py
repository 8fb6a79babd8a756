"""``mailsec-milter check``: exit status per verdict, the forged A-R count, the identities line
and ``--zone`` files in BIND format (issue 13), run in-process on the golden cases' inputs."""

from __future__ import annotations

import contextlib
import io
import json
import tomllib
from pathlib import Path
from typing import Any

import pytest

from mailsec_milter.cli import main

CASES = Path(__file__).resolve().parents[1] / "golden" / "cases"
FORGERY = CASES / "02-p-reject-forgery-is-rejected"
UNALIGNED_DKIM = CASES / "07-second-author-cannot-turn-fail-into-pass"

# The forgery case's zone as an ordinary BIND zone file: $TTL, $ORIGIN, SOA and NS, "@",
# relative names, a parenthesised multi-string TXT, comments.
BIND_ZONE = """\
$TTL 3600
$ORIGIN bank.example.
@               IN SOA ns1 hostmaster ( 2026120801 7200 900 1209600 300 )
                IN NS  ns1
@               IN TXT "v=spf1 " "ip4:192.0.2.0/24 -all"  ; SPF in two strings
@               IN A   192.0.2.1
_dmarc    300   IN TXT ( "v=DMARC1; p=reject; "
                         "rua=mailto:d@bank.example" )
$ORIGIN forger.example.
@               IN TXT "v=spf1 ip4:198.51.100.0/24 -all"
@               IN A   198.51.100.1
"""


def run(case: Path, *extra: str, message: Path | None = None,
        zone: Path | None = None) -> tuple[int, str, str]:
    envelope = tomllib.loads((case / "envelope.toml").read_text())
    argv = ["check", "--zone", str(zone or case / "zone.txt"),
            "--client-ip", envelope["client_ip"], "--helo", envelope["helo"],
            "--mail-from", envelope["mail_from"], *extra, str(message or case / "message.eml")]
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        status = main(argv)
    return status, out.getvalue(), err.getvalue()


def as_json(case: Path, *extra: str, **kwargs: Any) -> tuple[int, dict[str, Any]]:
    status, out, _ = run(case, "--json", *extra, **kwargs)
    return status, json.loads(out)


def test_a_reject_verdict_exits_4_and_says_so() -> None:
    status, out, _ = run(FORGERY)
    assert status == 4
    assert "verdict: reject (reason: dmarc_policy)" in out


def test_the_text_output_names_an_unaligned_dkim_pass() -> None:
    status, out, _ = run(UNALIGNED_DKIM)
    assert status == 4
    identities = next(line for line in out.splitlines() if line.startswith("identities: "))
    assert "dkim=pass (d=forger.example, not aligned)" in identities
    assert "spf=pass (mailfrom forger.example, not aligned)" in identities


def test_check_counts_the_forged_authentication_results_it_would_remove(
        tmp_path: Path) -> None:
    message = tmp_path / "forged.eml"
    message.write_bytes(
        b"Authentication-Results: localhost; dmarc=pass header.from=bank.example\n"
        b"Authentication-Results: other.example; spf=pass\n"
        b"Authentication-Results: (comment) LOCALHOST.; dkim=pass\n"
        + (FORGERY / "message.eml").read_bytes())
    config = tmp_path / "c.toml"
    config.write_text('[milter]\nauthserv_id = "localhost"\n')
    status, out, _ = run(FORGERY, "--config", str(config), message=message)
    assert "forged Authentication-Results removed: 2" in out.splitlines()
    status_json, result = as_json(FORGERY, "--config", str(config), message=message)
    assert result["forged_ar_removed"] == 2 and status == status_json == 4
    _, clean = as_json(FORGERY)
    assert clean["forged_ar_removed"] == 0


def test_check_reads_a_bind_zone_file_like_the_one_line_format(tmp_path: Path) -> None:
    zone = tmp_path / "bank.zone"
    zone.write_text(BIND_ZONE)
    bind_status, from_bind = as_json(FORGERY, zone=zone)
    line_status, from_lines = as_json(FORGERY)
    assert bind_status == line_status == 4
    assert from_bind["authentication_results"] == from_lines["authentication_results"]
    assert from_bind["verdict"] == from_lines["verdict"]
    assert "forger.example: 198.51.100.66 is authorized" in from_bind["authentication_results"]


def test_relative_names_need_an_origin(tmp_path: Path) -> None:
    zone = tmp_path / "relative.zone"
    zone.write_text('$TTL 300\n_dmarc TXT "v=DMARC1; p=none"\n@ TXT "v=spf1 -all"\n')
    status, _, err = run(FORGERY, zone=zone)
    assert status == 2
    assert "needs an $ORIGIN line or --origin" in err and str(zone) in err
    status, result = as_json(FORGERY, "--origin", "bank.example", zone=zone)
    assert status == 0  # p=none at _dmarc.bank.example: nothing to enforce
    assert result["verdict"]["published_policy"] == "none"


def test_origin_without_zone_is_a_usage_error() -> None:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        status = main(["check", "--origin", "x.example", "--client-ip", "192.0.2.1",
                       "--helo", "x", "--mail-from", "", str(FORGERY / "message.eml")])
    assert status == 2 and "--origin needs --zone" in err.getvalue()


def test_help_documents_the_exit_statuses_and_the_zone_format(
        capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["check", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "0 accept, 3 quarantine, 4 reject, 5 tempfail" in text
    assert "BIND zone file" in text and "$ORIGIN" in text
