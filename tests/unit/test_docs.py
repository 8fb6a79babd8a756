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
