"""Valid settings that are probably a mistake are said at start, on reload and by
``check-config`` (issue 13): an authserv-id that is not a host's FQDN, a message deadline Postfix
would cut short, a ``[milter] user`` that does not exist or cannot read the file."""

from __future__ import annotations

import contextlib
import io
import os
import pwd
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from mailsec_milter.cli import main
from mailsec_milter.config import config_warnings, settings_from_mapping

REPO = Path(__file__).resolve().parents[2]


def warnings_for(milter: dict[str, str], hostname: str = "mx.example.org") -> list[str]:
    return config_warnings(settings_from_mapping({"milter": milter}, lambda: hostname))


@pytest.mark.parametrize("authserv_id", ["localhost", "LOCALHOST.", "mx", "mx."])
def test_an_authserv_id_without_a_domain_is_warned_about(authserv_id: str) -> None:
    (warning,) = warnings_for({"authserv_id": authserv_id})
    assert "[milter] authserv_id" in warning and repr(authserv_id) in warning
    assert "fully-qualified" in warning


def test_the_silent_localhost_default_is_warned_about() -> None:
    """An empty authserv_id takes getfqdn(), which is "localhost" on a host without a domain."""
    (warning,) = warnings_for({}, hostname="localhost")
    assert "'localhost'" in warning and "empty authserv_id takes this host's name" in warning
    assert warnings_for({}, hostname="mx.example.org") == []
    assert warnings_for({"authserv_id": "mx.example.org"}) == []


@pytest.mark.parametrize(("deadline", "warned"), [("299s", False), ("300s", True),
                                                   ("5m", True), ("20s", False)])
def test_a_deadline_at_postfix_milter_content_timeout_is_warned_about(deadline: str,
                                                                      warned: bool) -> None:
    warnings = warnings_for({"authserv_id": "mx.example.org", "message_deadline": deadline})
    assert bool(warnings) is warned
    if warned:
        assert "milter_content_timeout (300s)" in warnings[0]


def check_config(path: Path) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        status = main(["check-config", str(path)])
    return status, out.getvalue(), err.getvalue()


def test_check_config_prints_the_warnings_and_still_passes(tmp_path: Path) -> None:
    config = tmp_path / "c.toml"
    config.write_text('[milter]\nauthserv_id = "localhost"\nmessage_deadline = "6m"\n'
                      'user = "no-such-user-mailsec13"\n')
    status, out, err = check_config(config)
    assert status == 0 and out.strip() == f"{config}: OK"
    warnings = [line for line in err.splitlines() if line.startswith("mailsec-milter: warning:")]
    assert len(warnings) == 3, err
    assert "authserv_id" in warnings[0] and "message_deadline" in warnings[1]
    assert "[milter] user 'no-such-user-mailsec13' does not exist" in warnings[2]


def test_a_clean_config_has_no_warnings(tmp_path: Path) -> None:
    config = tmp_path / "c.toml"
    config.write_text('[milter]\nauthserv_id = "mx.example.org"\nuser = "root"\n')
    assert check_config(config) == (0, f"{config}: OK\n", "")


@pytest.fixture
def root_only_config() -> Iterator[Path]:
    """A config file only root can read, in a directory everyone can enter."""
    if os.geteuid() != 0:
        pytest.skip("needs root to make a file another user cannot read")
    with tempfile.TemporaryDirectory() as where:
        os.chmod(where, 0o755)
        config = Path(where) / "mailsec-milter.toml"
        config.write_text('[milter]\nauthserv_id = "mx.example.org"\nuser = "nobody"\n')
        os.chown(config, 0, 0)
        os.chmod(config, 0o600)
        yield config


def test_check_config_warns_when_the_user_cannot_read_the_file(root_only_config: Path) -> None:
    status, _, err = check_config(root_only_config)
    assert status == 0
    assert f"{root_only_config} is not readable by [milter] user 'nobody'" in err
    assert "chmod 640" in err
    os.chmod(root_only_config, 0o644)
    assert check_config(root_only_config)[2] == ""


AS_NOBODY = """
import sys
from mailsec_milter.config import ConfigError
from mailsec_milter.daemon import config_unreadable_warning, read_config_text
print(config_unreadable_warning(sys.argv[1]))
try:
    read_config_text(sys.argv[1])
except ConfigError as exc:
    print("ConfigError:", exc)
"""


def test_the_daemon_says_who_must_read_the_file_not_errno_13(root_only_config: Path) -> None:
    """What the supervisor logs at start (after dropping to the user) and on a reload."""
    nobody = pwd.getpwnam("nobody")
    result = subprocess.run(
        [sys.executable, "-c", AS_NOBODY, str(root_only_config)], cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO)}, user=nobody.pw_uid, group=nobody.pw_gid,
        extra_groups=[], capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 0, result.stderr
    start, reload = result.stdout.splitlines()
    assert start.startswith(f"{root_only_config} is not readable by user 'nobody'")
    assert "every reload (SIGHUP) will fail" in start
    assert reload.startswith(f"ConfigError: cannot read {root_only_config}: permission denied "
                             "for user 'nobody'")
    assert "readable by the [milter] user" in reload and "Errno" not in reload
