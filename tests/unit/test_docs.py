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
