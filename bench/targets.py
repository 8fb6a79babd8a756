"""The milters under test, each started on loopback and stopped by PID.

- ``mailsec``: our daemon through ``tests/support/milterproc.MilterProcess`` (SPF, DKIM, DMARC,
  TLS, A-R), DNS from the benchmark's server, otherwise the embedded defaults;
- ``noop``: ``bench/noop_milter.py``, the Python protocol floor (the baseline of every ratio);
- ``chain``: Debian's OpenDKIM (verify mode) then OpenDMARC (SPF self-validation, trusts
  OpenDKIM's A-R, rejects DMARC failures), chained as Postfix chains two milters. OpenDKIM reads
  DNS through libunbound forwarding to our server; OpenDMARC uses the libc resolver, so it runs
  in a private mount namespace whose ``/etc/resolv.conf`` names our server (which therefore
  listens on port 53 of a loopback address). The system's own files are never changed;
- ``rspamd``: Debian's rspamd 3.4 in milter mode (a self-scanning proxy worker, 2 processes)
  from a private config with only the SPF, DKIM, DMARC and A-R modules; its resolver takes a
  port, so it asks the benchmark's server directly (no root needed for that).
"""

from __future__ import annotations

import contextlib
import json
import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.support import milterclient as mc
from tests.support.milterproc import MilterProcess, free_tcp_port

from . import REPO
from .corpus import AUTHSERV_ID, BenchMessage, Corpus, SessionSpec, expected_action
from .driver import stage_macros
from .procstat import kill_leftovers, tree_identities

PEER_BINARIES = ("opendkim", "opendmarc", "unshare", "mount")
PSL_PATHS = ("/usr/share/publicsuffix/public_suffix_list.dat",)
RSPAMD_USER = "_rspamd"  # the Debian package's user; rspamd refuses to keep root
RSPAMD_WORKERS = 2
# Checked at start: one message of each passing kind, one of each DMARC enforcement verdict.
RSPAMD_PROBES = ("pass-rsa", "pass-ed25519", "reject", "quarantine")


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
    unix_socket: str | None = None  # "unix:PATH" the same processes also listen on

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


def rspamd_missing() -> list[str]:
    """Binaries the rspamd peer needs that are not installed."""
    path = os.environ.get("PATH", "") + ":/usr/sbin:/sbin"
    return [b for b in ("rspamd",) if shutil.which(b, path=path) is None]


def _rspamd_conf(rspamd_dir: Path, port: int, nameserver: str) -> Path:
    # A whole config of our own, not Debian's rspamd.conf + local.d: that one also loads the
    # rules (rspamd.lua: hundreds of regexp and Lua rules) and ~45 modules, which local.d could
    # only switch off one by one. Here a Lua module without a section stays "unconfigured"
    # (disabled) and `filters` names the only C module, so exactly spf, dkim, dmarc and
    # milter_headers run (`rspamadm configdump -m` lists them).
    conf = rspamd_dir / "rspamd.conf"
    conf.write_text(f"""\
# mailsec-milter benchmark: rspamd as a milter, authentication modules only.
options {{
  pidfile = "{rspamd_dir}/rspamd.pid";
  filters = "dkim";                 # C modules: DKIM only (no chartable, regexp, fuzzy_check)
  explicit_modules = [];            # not even "settings"
  hs_cache_dir = "{rspamd_dir}/db/";  # the TLD list compiled for hyperscan (~10 s at start)
  cache_file = "{rspamd_dir}/db/symbols.cache";
  tempdir = "{rspamd_dir}/tmp";
  url_tld = "${{SHAREDIR}}/effective_tld_names.dat";  # DMARC organisational domains
  dns {{
    nameserver = ["{nameserver}"];  # the benchmark's server; rspamd's resolver takes a port
    timeout = 1s;                   # Debian's options.inc from here on
    sockets = 16;
    retransmits = 5;
  }}
  dns_max_requests = 64;
  task_timeout = 8s;
}}
logging {{
  type = "file";
  filename = "{rspamd_dir}/rspamd.log";
  level = "notice";                 # one summary line per message, as our milter logs
}}
worker "rspamd_proxy" {{
  bind_socket = "{rspamd_dir}/milter.sock mode=0666";  # Postfix mode's second transport
  bind_socket = "127.0.0.1:{port}";  # the last one names the workers in `ps`
  milter = yes;
  timeout = 120s;
  count = {RSPAMD_WORKERS};
  upstream "local" {{
    default = yes;
    self_scan = yes;                # scan in the proxy itself: no "normal" worker, no hop
  }}
  discard_on_reject = false;
  quarantine_on_reject = false;
}}
actions {{
  reject = 15;                      # Debian's thresholds; the auth symbols alone reach none,
  add_header = 6;                   # the verdicts come from the DMARC module below
  greylist = 4;
  quarantine {{                      # not in Debian's actions: without it the DMARC module's
    flags = ["no_threshold"];       # "quarantine" fails (unknown action) and the mail passes
  }}
}}
modules {{
  path = "${{PLUGINSDIR}}";
}}
spf {{
  spf_cache_size = 2k;
  spf_cache_expire = 1d;
}}
dkim {{
  dkim_cache_size = 2k;
  dkim_cache_expire = 1d;
  time_jitter = 6h;
  trusted_only = false;
  skip_multi = false;
}}
dmarc {{
  actions {{                         # p=reject fails are rejected, p=quarantine quarantined
    reject = "reject";
    quarantine = "quarantine";
  }}
}}
milter_headers {{
  use = ["authentication-results"];
}}
""")
    return conf


def _probe_rspamd(address: str, probes: Sequence[tuple[BenchMessage, SessionSpec]]) -> list[str]:
    """Send each probe as Postfix would; problems found (empty when rspamd really checked)."""
    problems: list[str] = []
    for number, (message, session) in enumerate(probes):
        port = 39000 + number
        where = f"{message.category} message {message.index}"
        try:
            with mc.MilterClient.connect(address, timeout=30) as client:
                client.negotiate()
                macros = stage_macros(client, session, port, message, f"PROBE{number:X}")
                result = client.send_message(
                    message.raw, client_ip=session.client_ip, helo=session.helo,
                    mail_from=message.mail_from, rcpts=list(message.rcpts), macros=macros,
                    client_name=session.client_name, client_port=port, filter_macros=False)
        except (mc.MilterProtocolError, OSError) as exc:
            problems.append(f"{where}: {type(exc).__name__}: {exc}")
            continue
        action = "accept" if result.action == "continue" else result.action
        want = expected_action(message)
        if action != want:
            problems.append(f"{where}: {action}, expected {want}")
        if action != "accept":
            continue  # rspamd adds no header to a message it rejects
        ar = [e.value.strip() for e in result.header_edits
              if e.name.lower() == "authentication-results"]
        if not ar:
            problems.append(f"{where}: no Authentication-Results header added "
                            f"(edits: {result.header_edits})")
            continue
        missing = [f"{kind}=pass" for kind in ("dkim", "spf", "dmarc")
                   if f"{kind}=pass" not in ar[0]]
        if not ar[0].startswith(AUTHSERV_ID) or missing:
            problems.append(f"{where}: A-R lacks {missing or [AUTHSERV_ID]}: {ar[0]!r}")
    return problems


def start_rspamd(workdir: Path, nameserver: str, corpus: Corpus) -> Target:
    """rspamd in milter mode on a free loopback port, checked on a few corpus messages.

    Fails (RuntimeError) unless its A-R for passing messages shows dkim, spf and dmarc passes
    under our authserv-id and DMARC failures are rejected/quarantined as their policy says:
    otherwise its numbers would be those of a milter that checks nothing.
    """
    rspamd_dir = Path(tempfile.mkdtemp(prefix="bench-rspamd-", dir=workdir))
    rspamd_dir.chmod(0o755)
    for sub in ("db", "tmp"):
        (rspamd_dir / sub).mkdir()
    port = free_tcp_port()
    address = f"inet:{port}@127.0.0.1"
    version = "rspamd"
    with contextlib.suppress(OSError, subprocess.SubprocessError, IndexError):
        shown = subprocess.run(["rspamd", "--version"], capture_output=True, text=True,
                               timeout=10)  # "Rspamd daemon version 3.4"
        version = f"rspamd {shown.stdout.split()[-1]}"
    target = Target("rspamd", f"{version} (C + Lua, milter mode, auth modules only, "
                    f"{RSPAMD_WORKERS} workers)", "SPF, DKIM, DMARC", [address],
                    workdir=rspamd_dir, unix_socket=f"unix:{rspamd_dir / 'milter.sock'}")
    conf = _rspamd_conf(rspamd_dir, port, nameserver)
    log = rspamd_dir / "rspamd.log"
    out_log = rspamd_dir / "rspamd.out"  # what it says before its own log is open
    args = ["rspamd", "-f", "-c", str(conf)]
    # Its built-in paths too, so nothing goes to /var/lib/rspamd, /run/rspamd or /var/log.
    for name, value in (("DBDIR", rspamd_dir / "db"), ("RUNDIR", rspamd_dir),
                        ("LOGDIR", rspamd_dir)):
        args += ["--var", f"{name}={value}"]
    if os.geteuid() == 0:
        try:
            user = pwd.getpwnam(RSPAMD_USER)
        except KeyError:
            raise RuntimeError(f"rspamd drops root to {RSPAMD_USER}, which does not exist "
                               "(scripts/install-deps.sh --bench creates it)") from None
        for path in (rspamd_dir, *rspamd_dir.iterdir()):
            os.chown(path, user.pw_uid, user.pw_gid)
        args += ["-u", RSPAMD_USER, "-g", RSPAMD_USER]
    with out_log.open("ab") as out:
        process = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT, cwd=rspamd_dir,
                                   start_new_session=True)
    target.stoppers.append(lambda: stop_popen(process))
    target.pids.append(process.pid)
    probes = [(m, corpus.sessions[0]) for kind in RSPAMD_PROBES
              for m in [next((m for m in corpus.messages
                              if kind in (m.category, expected_action(m))), None)]
              if m is not None]
    try:
        if not any(m.category.startswith("pass-") for m, _ in probes):
            raise RuntimeError("no passing message in the corpus to check rspamd with")
        try:  # the first start compiles the TLD list for hyperscan: ~10 s on an idle core
            _wait_listening(address, process, out_log, timeout=120.0)
        except RuntimeError as exc:
            raise RuntimeError(f"{exc}\nrspamd.log:\n{_tail(log, 1500)}") from None
        problems = _probe_rspamd(address, probes)
        if problems:
            raise RuntimeError("rspamd does not check as configured: " + "; ".join(problems)
                               + f"\nlog tail:\n{_tail(log, 1500)}")
    except BaseException:
        target.stop()
        raise
    target.notes.append(f"config: {conf.read_text()}")
    target.notes.append("checked at start: " + ", ".join(
        f"{m.category} (p={m.policy}) → {expected_action(m)}" for m, _ in probes)
        + "; A-R with dkim/spf/dmarc=pass on the passing ones")
    return target
