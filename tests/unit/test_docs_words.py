"""What the docs, the man page, ``--help`` and the unit say matches the code and the shared
material (issue 13 nits): DMARC and ARC named everywhere the product is described, empty
defaults shown as values, the conformance gap note true to the folder."""

from __future__ import annotations

import re
import shutil
import subprocess
import tomllib
from pathlib import Path

import pytest

from mailsec_milter.cli import _parser
from mailsec_milter.config import KEYS, render_defaults_markdown, render_defaults_toml
from mailsec_milter.manpage import render
from tests.support.conformance import conformance_dir

REPO = Path(__file__).resolve().parents[2]


def test_every_description_of_the_product_names_dmarc_and_arc() -> None:
    man_name = render(_parser()).split(".SH NAME\n", 1)[1].splitlines()[0]
    unit = (REPO / "systemd" / "mailsec-milter.service").read_text()
    description = re.search(r"^Description=(.*)$", unit, re.M)
    assert description is not None
    for text in (_parser().format_help(), man_name, description.group(1)):
        flat = " ".join(text.split())
        assert "DMARC" in flat and "ARC," in flat, text


def test_print_defaults_writes_an_empty_table_as_toml_does() -> None:
    text = render_defaults_toml()
    assert "domain_overrides = {}\n" in text and "{  }" not in text
    assert "| `{}` |" in render_defaults_markdown()
    parsed = tomllib.loads(text)  # and it reads back as the defaults
    for key in KEYS:
        assert parsed[key.section][key.name] == key.default, key.dotted


@pytest.mark.skipif(shutil.which("groff") is None, reason="groff not installed")
def test_the_man_page_shows_an_empty_default_as_a_value() -> None:
    """``.B user = ""`` lost its quotes in roff, and .TP then set the description right after
    the bare ``=``, as if it were the value."""
    result = subprocess.run(["groff", "-man", "-Tascii", "-P-cbou", "-rLL=200n",
                             str(REPO / "docs" / "mailsec-milter.8")],
                            capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 0, result.stderr
    lines = [line.strip() for line in result.stdout.splitlines()]
    for key in KEYS:
        if key.default == "":
            assert f'{key.name} = ""' in lines, key.dotted
    assert 'socket_mode = "0660"' in lines  # strings keep their quotes, as in the TOML
    assert "domain_overrides = {}" in lines


def test_the_conformance_gap_note_matches_the_shared_folder() -> None:
    shared = conformance_dir()
    if not (shared / "dmarc").is_dir():
        pytest.skip(f"no shared conformance material at {shared}")
    doc = (REPO / "docs" / "CONFORMANCE.md").read_text()
    gaps = doc.split("## Known gaps in the shared material", 1)[1].split("\n## ", 1)[0]
    folder = shared / "dmarc" / "mailauth-rfc9989"
    manifest = (shared / "dmarc" / "MANIFEST.md").read_text()
    gone = not folder.exists() and "mailauth-rfc9989" not in manifest
    flat = " ".join(gaps.split())
    assert ("`dmarc/mailauth-rfc9989/` is no longer in the shared material at all" in flat) \
        is gone
    assert "holds only mailauth's LICENSE:" not in flat or not gone


def test_checks_exit_statuses_are_documented_as_the_code_returns_them() -> None:
    from mailsec_milter.cli import CHECK_EXIT, CHECK_EXIT_HELP

    assert 2 not in CHECK_EXIT.values() and len(set(CHECK_EXIT.values())) == len(CHECK_EXIT)
    man = render(_parser())
    exit_section = man.split(".SH EXIT STATUS\n", 1)[1].split(".SH", 1)[0]
    readme = " ".join((REPO / "README.md").read_text().split())
    for action, status in CHECK_EXIT.items():
        assert f"{status} {action.value}" in CHECK_EXIT_HELP
        assert f"{status} {action.value}" in exit_section
        assert f"**{status}** {action.value}" in readme
