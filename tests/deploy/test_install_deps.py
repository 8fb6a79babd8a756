"""scripts/install-deps.sh on a fake host: it leaves the host's own services exactly as they were.

The script runs for real (bash, its own logic) against PATH shims that log every call and never
reach the real apt, dpkg, debconf or systemd: ``systemctl`` keeps unit state in files,
``apt-get install`` "starts" the services a test names (by systemd unit state, or by launching a
process and writing its PID file, as a Debian init script would), ``id -u`` answers 1000 so every
privileged call goes through the ``sudo`` shim (so ``kill`` is the logged shim, not bash's
builtin). ``INSTALL_DEPS_ROOT`` moves the paths the script inspects or writes
(/run/systemd/system, /usr/sbin/policy-rc.d, the PID files) into a temp dir. The host's Postfix
and Unbound are stand-in processes named ``master`` and ``unbound`` (copies of sleep(1)) with
PID files, running before the install; nothing may stop, disable or kill them.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.support.milterproc import REPO

SCRIPT = REPO / "scripts" / "install-deps.sh"
TEST_PKGS_INSTALLED_EXCEPT = "prometheus"

SHIMS = {
    "systemctl": r'''
echo "systemctl $*" >>"$SHIM_LOG"
verb=$1; unit=${2%.service}
case "$verb" in
  is-active)
    state=$(cat "$FAKE_STATE/$unit.active" 2>/dev/null || echo inactive); echo "$state"
    [ "$state" = active ] ;;
  is-enabled)
    if [ -f "$FAKE_STATE/$unit.enabled" ]; then
      state=$(cat "$FAKE_STATE/$unit.enabled"); echo "$state"; [ "$state" = enabled ]
    else
      echo "Failed to get unit file state for $unit.service: No such file or directory" >&2
      exit 1
    fi ;;
  stop) echo inactive >"$FAKE_STATE/$unit.active" ;;
  disable) echo disabled >"$FAKE_STATE/$unit.enabled" ;;
  *) exit 0 ;;
esac
''',
    "dpkg-query": r'''
echo "dpkg-query $*" >>"$SHIM_LOG"
pkg=${!#}
for m in $FAKE_MISSING; do [ "$m" = "$pkg" ] && exit 1; done
printf 'install ok installed'
''',
    "apt-get": r'''
echo "apt-get $*" >>"$SHIM_LOG"
case " $* " in *" install "*) ;; *) exit 0 ;; esac
for unit in $FAKE_INSTALL_STARTS_UNITS; do
  echo active >"$FAKE_STATE/$unit.active"; echo enabled >"$FAKE_STATE/$unit.enabled"
done
for entry in $FAKE_INSTALL_STARTS_PIDS; do
  comm=${entry%%=*}; pidfile=$INSTALL_DEPS_ROOT${entry#*=}
  mkdir -p "$(dirname "$pidfile")"
  nohup "$FAKE_PROCS/$comm" 300 >/dev/null 2>&1 &
  echo $! >"$pidfile"
done
''',
    "debconf-set-selections": r'''
echo "debconf-set-selections $* <<< $(cat)" >>"$SHIM_LOG"
''',
    "sudo": r'''
echo "sudo $*" >>"$SHIM_LOG"
exec "$@"
''',
    "id": r'''
echo "id $*" >>"$SHIM_LOG"
if [ "$1" = -u ]; then echo 1000; else echo "uid=1000(tester) gid=1000(tester)"; fi
''',
    "kill": r'''
echo "kill $*" >>"$SHIM_LOG"
pid=${!#}
# Only the daemon the fake install started is really signalled (its PID is in that file).
started=$(cat "$FAKE_KILLABLE_PIDFILE" 2>/dev/null)
if [ -n "$started" ] && [ "$started" = "$pid" ]; then
  exec /bin/kill "$@"
fi
exit 0
''',
}
# Commands that change a service; none of them may name the host's Postfix or Unbound.
CHANGING = ("stop", "disable", "mask", "restart", "reload", "kill", "try-restart",
            "reload-or-restart", "--now")


@dataclass
class FakeHost:
    """A temp dir laid out as a host: shims, fake root, unit state, stand-in daemons."""

    base: Path
    systemd: bool
    missing: list[str]
    processes: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)

    @property
    def root(self) -> Path:
        return self.base / "root"

    @property
    def state(self) -> Path:
        return self.base / "state"

    @property
    def procs(self) -> Path:
        return self.base / "procs"

    @property
    def log(self) -> Path:
        return self.base / "calls.log"

    def setup(self) -> None:
        shims = self.base / "shims"
        for d in (shims, self.root / "usr" / "sbin", self.state, self.procs):
            d.mkdir(parents=True)
        if self.systemd:
            (self.root / "run" / "systemd" / "system").mkdir(parents=True)
        for name, body in SHIMS.items():
            path = shims / name
            path.write_text("#!/bin/bash\n" + body.lstrip())
            path.chmod(0o755)
        sleep = shutil.which("sleep")
        assert sleep is not None
        for comm in ("master", "unbound", "prometheus"):  # comm = executable name
            shutil.copy(sleep, self.procs / comm)
        # The checkout the script sees: a venv that is already complete (no pip run).
        work = self.base / "work"
        (work / "scripts").mkdir(parents=True)
        shutil.copy(SCRIPT, work / "scripts" / "install-deps.sh")
        venv = work / ".venv"
        (venv / "bin").mkdir(parents=True)
        (venv / "bin" / "python").write_text("#!/bin/sh\nexit 0\n")
        (venv / "bin" / "python").chmod(0o755)
        fakepy = self.base / "fakepy"
        fakepy.mkdir()
        (fakepy / "python3").write_text("#!/bin/sh\nexit 1\n")  # never run: the venv is there
        (fakepy / "python3").chmod(0o755)
        (venv / "pyvenv.cfg").write_text(f"home = {self.base / 'fakepy'}\n")
        (venv / ".installed-test").touch()
        self.log.touch()

    def run_daemon(self, unit: str, comm: str, pid_file: str) -> int:
        """A stand-in for a daemon the host already runs: live process, PID file, unit state."""
        proc = subprocess.Popen([str(self.procs / comm), "300"], start_new_session=True)
        self.processes[unit] = proc
        path = self.root / pid_file.lstrip("/")
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(f"{proc.pid}\n")
        if self.systemd:
            (self.state / f"{unit}.active").write_text("active\n")
            (self.state / f"{unit}.enabled").write_text("enabled\n")
        return proc.pid

    def install(self, *, starts_units: str = "", starts_pids: str = "",
                killable: str = "") -> subprocess.CompletedProcess[str]:
        env = {
            "PATH": f"{self.base / 'shims'}:/usr/bin:/bin",
            "HOME": str(self.base),
            "SHIM_LOG": str(self.log),
            "FAKE_STATE": str(self.state),
            "FAKE_PROCS": str(self.procs),
            "FAKE_MISSING": " ".join(self.missing),
            "FAKE_INSTALL_STARTS_UNITS": starts_units,
            "FAKE_INSTALL_STARTS_PIDS": starts_pids,
            "FAKE_KILLABLE_PIDFILE": str(self.root / killable.lstrip("/")) if killable else "",
            "INSTALL_DEPS_ROOT": str(self.root),
            "PYTHON": str(self.base / "fakepy" / "python3"),
        }
        return subprocess.run(["bash", str(self.base / "work" / "scripts" / "install-deps.sh"),
                               "--test"], env=env, capture_output=True, text=True, timeout=60,
                              check=False)

    def calls(self) -> list[str]:
        return self.log.read_text().splitlines()

    def state_of(self, unit: str) -> tuple[str, str]:
        def read(kind: str) -> str:
            path = self.state / f"{unit}.{kind}"
            return path.read_text().strip() if path.exists() else "-"
        return read("active"), read("enabled")

    def pid_in_file(self, pid_file: str) -> int | None:
        path = self.root / pid_file.lstrip("/")
        return int(path.read_text()) if path.exists() else None

    def close(self) -> None:
        pids = [p.pid for p in self.processes.values()]
        started = self.pid_in_file("/run/prometheus/prometheus.pid")
        if started is not None and _comm(started) == "prometheus":
            pids.append(started)
        for pid in pids:
            if _comm(pid) in ("master", "unbound", "prometheus"):
                os.kill(pid, signal.SIGKILL)
        for proc in self.processes.values():
            proc.wait(timeout=10)


HostFactory = Callable[..., FakeHost]


def _comm(pid: int) -> str | None:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return None


def _alive(pid: int) -> bool:
    comm = _comm(pid)
    if comm is None:
        return False
    state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    return state != "Z"


@pytest.fixture
def host_factory(tmp_path: Path) -> Iterator[HostFactory]:
    hosts: list[FakeHost] = []

    def make(*, systemd: bool, missing: list[str]) -> FakeHost:
        host = FakeHost(tmp_path / f"host{len(hosts)}", systemd, missing)
        host.setup()
        hosts.append(host)
        return host

    yield make
    for host in hosts:
        host.close()


def _touching(calls: list[str], names: tuple[str, ...]) -> list[str]:
    """Calls that stop, disable, kill, ... a service or PID in ``names``."""
    out = []
    for call in calls:
        words = call.split()
        if words[0] not in ("systemctl", "kill", "service", "invoke-rc.d"):
            continue
        if not any(w in CHANGING for w in words) and words[0] != "kill":
            continue
        if any(w.removesuffix(".service") in names for w in words[1:]):
            out.append(call)
    return out


def test_systemd_host_keeps_its_postfix_and_unbound_and_stops_what_the_install_started(
        host_factory: HostFactory) -> None:
    host = host_factory(systemd=True, missing=["prometheus"])
    postfix_pid = host.run_daemon("postfix", "master", "/var/spool/postfix/pid/master.pid")
    unbound_pid = host.run_daemon("unbound", "unbound", "/run/unbound.pid")
    result = host.install(starts_units="prometheus")
    assert result.returncode == 0, result.stderr
    calls = host.calls()
    assert "apt-get install -y -qq --no-install-recommends prometheus" in calls, calls
    # The host's own mail and DNS: not stopped, not disabled, not killed, still running.
    assert _touching(calls, ("postfix", "unbound", str(postfix_pid), str(unbound_pid))) == []
    assert host.state_of("postfix") == ("active", "enabled")
    assert host.state_of("unbound") == ("active", "enabled")
    assert _alive(postfix_pid) and _alive(unbound_pid)
    # What the install brought up is taken down again, by its unit.
    assert "systemctl stop prometheus.service" in calls, calls
    assert "systemctl disable prometheus.service" in calls, calls
    assert host.state_of("prometheus") == ("inactive", "disabled")
    # Postfix was not being installed: its debconf answer is left alone.
    assert not [c for c in calls if c.startswith("debconf-set-selections")], calls
    # The temporary policy-rc.d is gone again.
    assert not (host.root / "usr" / "sbin" / "policy-rc.d").exists()


def test_init_script_host_keeps_its_daemons_and_stops_the_one_the_install_started(
        host_factory: HostFactory) -> None:
    host = host_factory(systemd=False, missing=["prometheus"])
    postfix_pid = host.run_daemon("postfix", "master", "/var/spool/postfix/pid/master.pid")
    unbound_pid = host.run_daemon("unbound", "unbound", "/run/unbound.pid")
    result = host.install(starts_pids="prometheus=/run/prometheus/prometheus.pid",
                          killable="/run/prometheus/prometheus.pid")
    started = host.pid_in_file("/run/prometheus/prometheus.pid")
    assert started is not None and started not in (postfix_pid, unbound_pid)
    assert result.returncode == 0, result.stderr
    calls = host.calls()
    assert f"kill -TERM {started}" in calls, calls
    assert not [c for c in calls if c.startswith("systemctl ") and "is-" not in c], calls
    assert _touching(calls, ("postfix", "unbound", str(postfix_pid), str(unbound_pid))) == []
    assert _alive(postfix_pid) and _alive(unbound_pid)


def test_postfix_that_the_install_brings_up_is_preseeded_and_taken_down_again(
        host_factory: HostFactory) -> None:
    host = host_factory(systemd=True, missing=["postfix"])
    unbound_pid = host.run_daemon("unbound", "unbound", "/run/unbound.pid")
    result = host.install(starts_units="postfix")
    assert result.returncode == 0, result.stderr
    calls = host.calls()
    preseed = [c for c in calls if c.startswith("debconf-set-selections")]
    assert preseed == ["debconf-set-selections  <<< "
                       "postfix postfix/main_mailer_type select No configuration"], calls
    assert "systemctl stop postfix.service" in calls, calls
    assert "systemctl disable postfix.service" in calls, calls
    assert _touching(calls, ("unbound", str(unbound_pid))) == []
    assert host.state_of("unbound") == ("active", "enabled") and _alive(unbound_pid)


def test_an_existing_policy_rc_d_is_kept_and_the_run_still_succeeds(
        host_factory: HostFactory) -> None:
    host = host_factory(systemd=True, missing=["prometheus"])
    policy = host.root / "usr" / "sbin" / "policy-rc.d"
    policy.write_text("#!/bin/sh\nexit 0\n")
    result = host.install()
    assert result.returncode == 0, result.stderr
    assert policy.read_text() == "#!/bin/sh\nexit 0\n"


def test_nothing_missing_means_no_apt_no_debconf_no_service_call(host_factory: HostFactory) -> None:
    host = host_factory(systemd=True, missing=[])
    host.run_daemon("postfix", "master", "/var/spool/postfix/pid/master.pid")
    result = host.install()
    assert result.returncode == 0, result.stderr
    calls = host.calls()
    assert [c.split()[0] for c in calls if not c.startswith("dpkg-query")] == [], calls
