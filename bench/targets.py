"""The milters under test, each started on loopback and stopped by PID.

- ``mailsec``: our daemon through ``tests/support/milterproc.MilterProcess`` (SPF, DKIM, DMARC,
  TLS, A-R), DNS from the benchmark's server, otherwise the embedded defaults;
- ``noop``: ``bench/noop_milter.py``, the Python protocol floor (the baseline of every ratio);
- ``chain``: Debian's OpenDKIM (verify mode) then OpenDMARC (SPF self-validation, trusts
  OpenDKIM's A-R, rejects DMARC failures), chained as Postfix chains two milters. OpenDKIM reads
  DNS through libunbound forwarding to our server; OpenDMARC uses the libc resolver, so it runs
  in a private mount namespace whose ``/etc/resolv.conf`` names our server (which therefore
  listens on port 53 of a loopback address). The system's own files are never changed.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mailsec_milter.testing import milterclient as mc
from tests.support.milterproc import MilterProcess, free_tcp_port

from . import REPO
from .corpus import AUTHSERV_ID
from .procstat import kill_leftovers, tree_identities

PEER_BINARIES = ("opendkim", "opendmarc", "unshare", "mount")
PSL_PATHS = ("/usr/share/publicsuffix/public_suffix_list.dat",)


@dataclass
class Target:
    """A running milter (or chain): where the driver connects and which PIDs to measure."""

    key: str
    label: str
    checks: str
    addresses: list[str]
    pids: list[int] = field(default_factory=list)
    stoppers: list[Any] = field(default_factory=list)
    workdir: Path | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def postfix_spec(self) -> str:
        """The addresses written for Postfix's ``smtpd_milters``."""
        specs = []
        for address in self.addresses:
            if address.startswith("unix:"):
                specs.append(address)
            else:
                port, _, host = address.split(":", 1)[1].partition("@")
                specs.append(f"inet:{host}:{port}")
        return ", ".join(specs)

    def stop(self) -> None:
        """Stop every process of this target (reverse start order), then any descendant that
        outlived its parent (by PID and start time), and remove its temp dir."""
        family = tree_identities(self.pids)
        while self.stoppers:
            stopper = self.stoppers.pop()
            with contextlib.suppress(Exception):
                stopper()
        leftovers = kill_leftovers(family)
        if leftovers:
            self.notes.append(f"had to stop leftover processes {leftovers}")
            for log in sorted(self.workdir.glob("*.log")) if self.workdir else []:
                self.notes.append(f"leftover context, tail of {log.name}:\n"
                                  + _tail(log, 1500))
        if self.workdir is not None:
            shutil.rmtree(self.workdir, ignore_errors=True)
            self.workdir = None


def _wait_listening(address: str, process: subprocess.Popen[bytes], log: Path,
                    timeout: float = 30.0) -> None:
    _family, host, port = mc.parse_address(address)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{process.args!r} exited ({process.returncode}):\n"
                               f"{_tail(log)}")
        with contextlib.suppress(OSError), socket.create_connection((host, port), 0.5):
            return
        time.sleep(0.05)
    raise RuntimeError(f"{address} not listening after {timeout}s:\n{_tail(log)}")


def _tail(path: Path, limit: int = 3000) -> str:
    try:
        return path.read_text(errors="replace")[-limit:]
    except OSError:
        return ""


def stop_popen(process: subprocess.Popen[bytes], grace: float = 15.0) -> None:
    """SIGTERM by PID, SIGKILL if it has not exited after ``grace`` seconds."""
    if process.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            process.send_signal(signal.SIGTERM)
        try:
            process.wait(grace)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                process.kill()
            process.wait(5)


def mailsec_config_keys() -> set[str]:
    """``section.key`` names the daemon in this checkout knows (from ``print-defaults``)."""
    out = subprocess.run([sys.executable, "-m", "mailsec_milter", "print-defaults"], cwd=REPO,
                         capture_output=True, text=True, timeout=60)
    keys: set[str] = set()
    section = ""
    for line in out.stdout.splitlines():
        line = line.strip()
        if line.startswith("[") and line.endswith("]"):
            section = line[1:-1]
        elif "=" in line and not line.startswith("#"):
            keys.add(f"{section}.{line.split('=', 1)[0].strip()}")
    return keys


def start_mailsec(nameserver: str, overrides: dict[str, dict[str, Any]], *,
                  unix_socket: bool = False, key: str = "mailsec") -> Target:
    """Our daemon via MilterProcess; ``overrides`` are extra TOML keys (``--milter-set``).

    Unless overridden, ``milter.workers`` is one per CPU core where the daemon has that key
    (issue 7 measures throughput "with workers set for the machine's cores").
    """
    config: dict[str, dict[str, Any]] = {
        "milter": {"authserv_id": AUTHSERV_ID},
        "dns": {"nameservers": [nameserver], "timeout": "5s"},
    }
    if "milter.workers" in mailsec_config_keys():
        config["milter"]["workers"] = os.cpu_count() or 1
    for section, values in overrides.items():
        config.setdefault(section, {}).update(values)
    process = MilterProcess(config, unix_socket=unix_socket)
    target = Target(key, "mailsec-milter (Python, pymilter)", "SPF, DKIM, DMARC, TLS",
                    [process.socket_spec], workdir=process.workdir)
    target.notes.append("config: " + json.dumps(process.config, sort_keys=True))
    target.stoppers.append(process.stop)
    try:
        process.start()
    except BaseException:
        target.stop()
        raise
    assert process.process is not None
    target.pids.append(process.process.pid)
    return target


def start_noop(workdir: Path, *, nodelay: bool = True, add_header: bool = False) -> Target:
    """The no-op pymilter on a free loopback port (options: see noop_milter.py)."""
    address = f"inet:{free_tcp_port()}@127.0.0.1"
    log = workdir / f"noop-{address.split(':')[1].split('@')[0]}.log"
    target = Target("noop", "no-op pymilter (the Python protocol floor)", "nothing", [address])
    args = [sys.executable, "-m", "bench.noop_milter", "--socket", address]
    if not nodelay:
        args.append("--no-nodelay")
    if add_header:
        args.append("--add-header")
    with log.open("ab") as out:
        process = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT, cwd=REPO,
                                   start_new_session=True)
    target.stoppers.append(lambda: stop_popen(process))
    target.pids.append(process.pid)
    try:
        _wait_listening(address, process, log)
    except BaseException:
        target.stop()
        raise
    return target


def peers_missing() -> list[str]:
    """Binaries the peer chain needs that are not installed."""
    path = os.environ.get("PATH", "") + ":/usr/sbin:/sbin"
    return [b for b in PEER_BINARIES if shutil.which(b, path=path) is None]


def _opendkim_conf(workdir: Path, port: int, dns_host: str) -> Path:
    # libunbound, forwarding to our server. Not through ResolverConfiguration: OpenDKIM
    # re-reads that file for every message, libunbound's config parser is not thread-safe,
    # and with concurrent sessions OpenDKIM then dies. Nor through resolv.conf: libunbound
    # then refuses loopback forwarders (do-not-query-localhost). "Nameservers" works.
    conf = workdir / "opendkim.conf"
    conf.write_text(
        f"Socket inet:{port}@127.0.0.1\n"
        "Mode v\n"
        f"AuthservID {AUTHSERV_ID}\n"
        "AlwaysAddARHeader yes\n"
        "SoftwareHeader no\n"
        "Syslog no\n"
        "LogWhy no\n"
        "MinimumKeyBits 1024\n"
        "DNSTimeout 5\n"
        "QueryCache yes\n"
        f"Nameservers {dns_host}\n"
        f"PidFile {workdir / 'opendkim.pid'}\n"
        "UMask 007\n"
    )
    return conf


def _opendmarc_conf(workdir: Path, port: int) -> Path:
    conf = workdir / "opendmarc.conf"
    lines = [
        f"Socket inet:{port}@127.0.0.1",
        f"AuthservID {AUTHSERV_ID}",
        f"TrustedAuthservIDs {AUTHSERV_ID}",
        "SPFSelfValidate true",
        "SPFIgnoreResults true",
        "RejectFailures true",
        "HoldQuarantinedMessages true",
        "FailureReports false",
        "RequiredHeaders false",
        "Syslog false",
        "SoftwareHeader false",
        f"PidFile {workdir / 'opendmarc.pid'}",
        "UMask 007",
    ]
    psl = next((p for p in PSL_PATHS if Path(p).is_file()), None)
    if psl:
        lines.append(f"PublicSuffixList {psl}")
    conf.write_text("\n".join(lines) + "\n")
    return conf


def start_peer_chain(workdir: Path, dns_host: str, dns_port: int) -> Target:
    """OpenDKIM → OpenDMARC on two free loopback ports (DNS must listen on dns_host:53)."""
    if dns_port != 53:
        raise RuntimeError("the peer chain needs the DNS server on port 53 (resolv.conf)")
    chain_dir = Path(tempfile.mkdtemp(prefix="bench-peers-", dir=workdir))
    chain_dir.chmod(0o755)
    dkim_port, dmarc_port = free_tcp_port(), free_tcp_port()
    while dmarc_port == dkim_port:
        dmarc_port = free_tcp_port()
    addresses = [f"inet:{dkim_port}@127.0.0.1", f"inet:{dmarc_port}@127.0.0.1"]
    target = Target("chain", "OpenDKIM → OpenDMARC (C, chained)", "SPF, DKIM, DMARC",
                    addresses, workdir=chain_dir)
    resolv = chain_dir / "resolv.conf"
    resolv.write_text(f"nameserver {dns_host}\noptions timeout:5 attempts:1\n")
    dkim_conf = _opendkim_conf(chain_dir, dkim_port, dns_host)
    dmarc_conf = _opendmarc_conf(chain_dir, dmarc_port)
    # Each in its own mount namespace with our resolv.conf bind-mounted over the system one
    # (visible to that process only); "sh -c ... exec" keeps the PID we measure and stop.
    wrapper = ["unshare", "--mount", "--propagation", "private", "--", "sh", "-c",
               'mount --bind "$0" /etc/resolv.conf && exec "$@"', str(resolv)]
    commands = [
        ("opendkim", [*wrapper, "opendkim", "-f", "-x", str(dkim_conf)], addresses[0]),
        ("opendmarc", [*wrapper, "opendmarc", "-f", "-c", str(dmarc_conf)], addresses[1]),
    ]
    try:
        for name, args, address in commands:
            log = chain_dir / f"{name}.log"
            with log.open("ab") as out:
                process = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT,
                                           cwd=chain_dir, start_new_session=True)
            target.stoppers.append(lambda p=process: stop_popen(p))
            target.pids.append(process.pid)
            _wait_listening(address, process, log)
    except BaseException:
        target.stop()
        raise
    versions = []
    for binary in ("opendkim", "opendmarc"):
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            shown = subprocess.run([binary, "-V"], capture_output=True, text=True, timeout=10)
            versions.append(shown.stdout.splitlines()[0].strip() if shown.stdout else binary)
    target.notes.extend(versions)
    return target
