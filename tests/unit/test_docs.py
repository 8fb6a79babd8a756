"""Generated documentation stays equal to the code: the man page, and the docs' promises."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from mailsec_milter.cli import _parser
from mailsec_milter.config import KEYS
from mailsec_milter.manpage import render

REPO = Path(__file__).resolve().parents[2]


def test_man_page_is_generated_from_the_parser_and_keys() -> None:
    text = render(_parser())
    assert text == (REPO / "docs" / "mailsec-milter.8").read_text(), (
        "docs/mailsec-milter.8 is stale: run scripts/gen-docs.sh")
    for key in KEYS:
        assert f".B {key.name.replace('-', chr(92) + '-')} = " in text, key.dotted
    assert "\\-\\-client\\-ip" in text


@pytest.mark.skipif(shutil.which("groff") is None, reason="groff not installed")
def test_man_page_renders_without_warnings() -> None:
    result = subprocess.run(["groff", "-man", "-Tutf8", "-ww", "-z",
                             str(REPO / "docs" / "mailsec-milter.8")],
                            capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 0
    assert result.stderr == ""


def test_readme_quick_start_has_exactly_two_commands() -> None:
    readme = (REPO / "README.md").read_text()
    section = readme.split("## Quick start", 1)[1].split("\n## ", 1)[0]
    block = section.split("```sh\n", 1)[1].split("```", 1)[0]
    commands = [line for line in block.splitlines() if line.strip()]
    assert [c.split()[0] for c in commands] == ["./scripts/run.sh", "./scripts/test.sh"]
    assert "scripts/test.sh" in (REPO / ".ci" / "run").read_text()


def test_every_doc_the_readme_names_exists() -> None:
    readme = (REPO / "README.md").read_text()
    for name in ("docs/DESIGN.md", "docs/CONFIGURATION.md", "docs/CONFORMANCE.md",
                 "docs/POLICY.md", "docs/MILTER_README.md", "docs/OPERATIONS.md",
                 "docs/METRICS.md", "CHANGELOG.md"):
        assert name in readme, name
        assert (REPO / name).exists(), name


def _master_cf_snippets(text: str) -> list[str]:
    """The code blocks that start with ``# /etc/postfix/master.cf`` (list items indented)."""
    snippets: list[str] = []
    lines = text.splitlines()
    i = 0
    while i < len(lines):
        if lines[i].strip().startswith("# /etc/postfix/master.cf"):
            indent = len(lines[i]) - len(lines[i].lstrip())
            block: list[str] = []
            i += 1
            while lines[i].strip() != "```":
                if lines[i].strip() != "...":  # "the rest of your entry"
                    block.append(lines[i][indent:])
                i += 1
            snippets.append("\n".join(block))
        i += 1
    return snippets


@pytest.mark.skipif(shutil.which("postconf") is None, reason="Postfix not installed")
def test_milter_readme_master_cf_entries_are_what_postfix_reads(tmp_path: Path) -> None:
    """Submission without us, the content filter's re-injection without milters (issue 13)."""
    snippets = _master_cf_snippets((REPO / "docs" / "MILTER_README.md").read_text())
    assert len(snippets) == 2, snippets
    (tmp_path / "main.cf").write_text("")
    (tmp_path / "master.cf").write_text("\n".join(snippets) + "\n")
    result = subprocess.run(
        ["postconf", "-c", str(tmp_path), "-P", "submission/inet/smtpd_milters",
         "submissions/inet/smtpd_milters", "127.0.0.1:10025/inet/smtpd_milters",
         "127.0.0.1:10025/inet/receive_override_options"],
        capture_output=True, text=True, timeout=30, check=False)
    assert result.returncode == 0 and result.stderr == "", result.stderr
    values: dict[str, str] = {}
    for line in result.stdout.splitlines():  # "name = value", or "name =" when empty
        name, _, value = line.partition(" =")
        values[name] = value.strip()
    assert values["submission/inet/smtpd_milters"] == "inet:127.0.0.1:8891"
    assert values["submissions/inet/smtpd_milters"] == "inet:127.0.0.1:8891"
    assert values["127.0.0.1:10025/inet/smtpd_milters"] == ""
    assert "no_milters" in values["127.0.0.1:10025/inet/receive_override_options"].split(",")


def test_docs_say_how_local_mail_reaches_the_milter() -> None:
    """Postfix presents sendmail(1) mail as localhost[127.0.0.1], and loopback is trusted."""
    default = next(k for k in KEYS if k.dotted == "[policy] trusted_networks").default
    assert default == ["127.0.0.0/8", "::1/128"]
    for name in ("README.md", "docs/MILTER_README.md", "docs/POLICY.md"):
        text = (REPO / name).read_text()
        assert "no client IP" not in text, name
        assert "localhost[127.0.0.1]" in text, name
    milter_readme = (REPO / "docs" / "MILTER_README.md").read_text()
    assert "trusted_networks = []" in milter_readme and "amavis" in milter_readme
def test_reload_is_described_as_it_happens() -> None:
    """Workers take a reload in place (no new generation of processes), and the docs say which
    configuration decides a message (tests/e2e/test_reload_e2e.py shows it with Postfix)."""
    from mailsec_milter import daemon

    for path in ("docs/OPERATIONS.md", "docs/DESIGN.md", "systemd/README.md",
                 "systemd/mailsec-milter.service"):
        text = (REPO / path).read_text()
        assert "generation" not in text, path
        assert "in place" in text, path
    assert "generation of workers" not in (daemon.__doc__ or "")
    operations = (REPO / "docs" / "OPERATIONS.md").read_text()
    assert "together with `DATA`" in operations
    assert "tests/e2e/test_reload_e2e.py" in operations


def test_logs_documented_as_the_unit_and_the_code_make_them() -> None:
    from mailsec_milter.logsetup import IDENT
    from tests.deploy.units import SERVICE, parse_unit

    service = parse_unit(SERVICE)["Service"]
    assert service["SyslogIdentifier"] == [IDENT]
    assert service["SyslogFacility"] == ["mail"]
    operations = (REPO / "docs" / "OPERATIONS.md").read_text()
    for needle in (f"{IDENT}[PID]:", "[log] target", "logfmt", "NOQUEUE:", "<22>"):
        assert needle in operations, needle
