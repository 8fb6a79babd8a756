"""``mailsec-milter reports send|list|show|top`` and ``check-config`` through cli.main."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest

from mailsec_milter.cli import main
from mailsec_milter.reports.store import open_store
from mailsec_milter.reports.xmlreport import validate
from tests.reports.test_sending import domain_record
from tests.reports.test_store import DAY
from tests.support.smtpsink import SmtpSink


def _config(tmp_path: Path, sending: bool = True, extra: str = "") -> Path:
    path = tmp_path / "c.toml"
    lines = ["[reports]", f'store = "{tmp_path / "reports.sqlite"}"']
    if sending:
        lines += ['org_name = "Example Receiver"', 'from = "dmarc@receiver.example"']
    path.write_text("\n".join(lines) + "\n" + extra)
    return path


@pytest.fixture
def filled(tmp_path: Path) -> Path:
    store = open_store(str(tmp_path / "reports.sqlite"))
    store.write([domain_record("victim.example", "mailto:d@victim.example,"
                               "mailto:r@third.example,mailto:x@fourth.example")] * 4
                + [domain_record("other.example", "mailto:d@other.example",
                                 source_ip="203.0.113.5", disposition="reject",
                                 dmarc_dkim="fail", dmarc_spf="fail")] * 2)
    store.close()
    zone = tmp_path / "zone"
    zone.write_text('victim.example._report._dmarc.third.example. TXT "v=DMARC1"\n'
                    "victim.example._report._dmarc.fourth.example. TXT TIMEOUT\n")
    return tmp_path


def test_out_writes_valid_gzipped_reports_and_claims_nothing(
        filled: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = _config(filled, sending=False)  # previews work before sending is configured
    out = filled / "out"
    assert main(["reports", "send", "--config", str(config), "--period", str(DAY),
                 "--out", str(out)]) == 0
    files = sorted(p.name for p in out.iterdir())
    assert len(files) == 2 and all(n.endswith(".xml.gz") for n in files)
    assert [n.split("!")[1] for n in files] == ["other.example", "victim.example"]
    for path in out.iterdir():
        validate(gzip.decompress(path.read_bytes()))
    assert open_store(str(filled / "reports.sqlite")).claims() == []
    assert "2 reports" in capsys.readouterr().out


def test_dry_run_prints_where_and_why_not(filled: Path,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    config = _config(filled)
    assert main(["reports", "send", "--config", str(config), "--period", str(DAY),
                 "--dry-run", "--zone", str(filled / "zone"), "--domain",
                 "victim.example"]) == 0
    out = capsys.readouterr().out
    assert "victim.example: would-send" in out and "other.example" not in out
    assert "send d@victim.example (same organizational domain)" in out
    assert "send r@third.example" in out
    assert "defer x@fourth.example (dns_trouble:" in out
    assert open_store(str(filled / "reports.sqlite")).claims() == []


def test_send_without_org_name_and_from_says_what_is_missing(
        filled: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["reports", "send", "--config", str(_config(filled, sending=False)),
                 "--period", str(DAY)]) == 2
    err = capsys.readouterr().err
    assert "[reports] org_name" in err and "[reports] from" in err


def test_send_mails_through_smtp_and_writes_the_status_file(
        filled: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with SmtpSink() as sink:
        config = _config(filled, extra=f'submit = "{sink.address}"\n')
        assert main(["reports", "send", "--config", str(config), "--period", str(DAY),
                     "--zone", str(filled / "zone")]) == 0
        recipients = sorted(m.recipients[0] for m in sink.state.messages)
    assert recipients == ["d@other.example", "d@victim.example", "r@third.example"]
    status = json.loads((filled / "reports-status.json").read_text())
    assert status["deferred"] == 1 and status["destinations_sent"] == 3
    assert status["skipped"] == {} and status["last_success"] > 0
    capsys.readouterr()
    assert main(["reports", "list", "--config", str(config)]) == 0
    listing = capsys.readouterr().out
    assert f"{DAY}  2 domains  6 messages  1 pending  (1 deferred, 1 sent)" in listing
    assert main(["reports", "list", "--config", str(config), "--period", str(DAY)]) == 0
    assert "victim.example  4 messages  deferred by" in capsys.readouterr().out


def test_show_prints_the_xml_and_top_ranks(filled: Path,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    config = _config(filled)
    assert main(["reports", "show", "other.example", "--config", str(config),
                 "--period", str(DAY)]) == 0
    shown = capsys.readouterr().out
    assert "<source_ip>203.0.113.5</source_ip>" in shown and "<count>2</count>" in shown
    assert main(["reports", "show", "nobody.example", "--config", str(config),
                 "--period", str(DAY)]) == 1
    capsys.readouterr()
    assert main(["reports", "top", "--config", str(config), "--period", str(DAY),
                 "--by", "source"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[1].split() == ["192.0.2.1", "4", "4", "0", "0", "0"]
    assert lines[2].split() == ["203.0.113.5", "2", "0", "0", "0", "2"]
    assert main(["reports", "top", "--config", str(config), "--period", str(DAY)]) == 0
    assert capsys.readouterr().out.splitlines()[1].split()[0] == "victim.example"


def test_a_store_that_is_not_a_database_is_a_clear_message(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "reports.sqlite").write_text("not a database\n" * 100)
    assert main(["reports", "list", "--config", str(_config(tmp_path))]) == 1
    assert "reports.sqlite" in capsys.readouterr().err


def test_check_config_explains_what_sending_needs(tmp_path: Path,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    # neither key: sending is off as by default, nothing to say (recording goes on)
    assert main(["check-config", str(_config(tmp_path, sending=False))]) == 0
    captured = capsys.readouterr()
    assert captured.out == f"{tmp_path / 'c.toml'}: OK\n" and "report" not in captured.err
    # half of it: a warning naming what is missing
    half = _config(tmp_path, sending=False, extra='org_name = "Example"\n')
    assert main(["check-config", str(half)]) == 0
    err = capsys.readouterr().err
    assert "warning: DMARC report sending stays off" in err and "[reports] from" in err
    assert "[reports] org_name" not in err
    assert main(["check-config", str(_config(tmp_path))]) == 0
    assert ("sending DMARC reports as dmarc@receiver.example via SMTP 127.0.0.1:25"
            in capsys.readouterr().out)


@pytest.mark.parametrize(("table", "message"), [
    ('from = "not an address"', "[reports] from"),
    ('submit = "nohost"', "[reports] submit"),
    ('suppress = ["not a domain!"]', "[reports] suppress"),
    ("max_per_destination = 0", "[reports] max_per_destination"),
])
def test_bad_sending_keys_are_named(tmp_path: Path, table: str, message: str,
                                    capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "c.toml"
    path.write_text(f"[reports]\n{table}\n")
    assert main(["check-config", str(path)]) == 2
    assert message in capsys.readouterr().err


def test_sending_today_is_allowed_with_a_warning(tmp_path: Path,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    from datetime import UTC, datetime

    today = datetime.now(UTC).date()
    store = open_store(str(tmp_path / "reports.sqlite"))
    store.write([domain_record("victim.example", "mailto:d@victim.example", day=today)])
    store.close()
    with SmtpSink() as sink:
        config = _config(tmp_path, extra=f'submit = "{sink.address}"\n')
        assert main(["reports", "send", "--config", str(config), "--period",
                     str(today)]) == 0
        assert len(sink.state.messages) == 1
    assert "is not over" in capsys.readouterr().err


def test_domain_may_be_given_as_a_u_label(tmp_path: Path,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    store = open_store(str(tmp_path / "reports.sqlite"))
    store.write([domain_record("xn--bcher-kva.example", "mailto:d@xn--bcher-kva.example")])
    store.close()
    assert main(["reports", "show", "bücher.example", "--config", str(_config(tmp_path)),
                 "--period", str(DAY)]) == 0
    assert "<domain>xn--bcher-kva.example</domain>" in capsys.readouterr().out
