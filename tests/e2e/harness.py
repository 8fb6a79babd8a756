"""End-to-end test harness: a private Unbound and a private Postfix on loopback.

Everything here listens on 127.0.0.1 only, lives in a temporary directory, is bounded in time
and is stopped by PID / process group. Nothing touches the system Postfix (``/etc/postfix/main.cf``,
``/var/spool/postfix``) or any system service. Postfix needs root (it drops to ``postfix``).
"""

from __future__ import annotations

import contextlib
import email
import email.message
import email.policy
import json
import os
import re
import shutil
import signal
import smtplib
import socket
import ssl
import subprocess
import tempfile
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Self

import dns.exception
import dns.message
import dns.query
import dns.rdata
import dns.rdataclass
import dns.rdatatype
import dns.resolver

__all__ = [
    "DnsServer",
    "HarnessError",
    "PostfixInstance",
    "SinkMessage",
    "SmtpOutcome",
    "SmtpReply",
    "free_port",
    "missing_binaries",
]

LOOPBACK = "127.0.0.1"
KEEP_ENV = "MAILSEC_E2E_KEEP"  # set to 1 to keep temp dirs after close() for debugging

UNBOUND = "unbound"
UNBOUND_CHECKCONF = "unbound-checkconf"
POSTFIX = "postfix"
POSTCONF = "postconf"
POSTQUEUE = "postqueue"
POSTCAT = "postcat"
POSTSUPER = "postsuper"
SMTP_SINK = "smtp-sink"
SENDMAIL = "sendmail"  # Postfix's sendmail(1): postdrop into the maildrop queue, then pickup
OPENSSL = "openssl"

_SBIN_PATH = "/usr/sbin:/usr/bin:/sbin:/bin"


class HarnessError(RuntimeError):
    """A harness component failed to set up, start or stop."""


# --------------------------------------------------------------------------------------------
# small helpers


def _which(name: str) -> str | None:
    """Find a binary on PATH plus the sbin directories (often missing from a user's PATH)."""
    path = os.environ.get("PATH", "") + os.pathsep + _SBIN_PATH.replace(":", os.pathsep)
    return shutil.which(name, path=path)


def _bin(name: str) -> str:
    """Absolute path of a required binary or :class:`HarnessError`."""
    found = _which(name)
    if found is None:
        raise HarnessError(f"required binary not found: {name}")
    return found


def missing_binaries(names: Iterable[str]) -> list[str]:
    """Names from ``names`` that are not installed."""
    return [n for n in names if _which(n) is None]


def free_port(*, udp: bool = False) -> int:
    """A currently free loopback TCP port (also free for UDP when ``udp``)."""
    for _ in range(50):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as tcp:
            tcp.bind((LOOPBACK, 0))
            port: int = tcp.getsockname()[1]
            if not udp:
                return port
            try:
                with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as u:
                    u.bind((LOOPBACK, port))
            except OSError:
                continue
            return port
    raise HarnessError("no free loopback port found")


def _run(
    args: Sequence[str], *, timeout: float = 30.0, check: bool = True
) -> subprocess.CompletedProcess[str]:
    """Run a short command with a deadline; raise :class:`HarnessError` on failure."""
    try:
        proc = subprocess.run(
            list(args),
            capture_output=True,
            text=True,
            errors="replace",
            timeout=timeout,
            stdin=subprocess.DEVNULL,
            check=False,
        )
    except subprocess.TimeoutExpired as exc:
        raise HarnessError(f"timed out after {timeout}s: {' '.join(args)}") from exc
    if check and proc.returncode != 0:
        raise HarnessError(
            f"command failed ({proc.returncode}): {' '.join(args)}\n"
            f"stdout: {proc.stdout}\nstderr: {proc.stderr}"
        )
    return proc


def _proc_stat(pid: int) -> tuple[str, int, int] | None:
    """(state, pgid, starttime) of ``pid`` from /proc, or None if it is gone."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = raw[raw.rindex(")") + 2 :].split()  # fields after "pid (comm) "
    return fields[0], int(fields[2]), int(fields[19])


def _group_members(pgid: int) -> list[int]:
    """Live (non-zombie) processes in process group ``pgid``."""
    members: list[int] = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        st = _proc_stat(int(entry.name))
        if st is not None and st[1] == pgid and st[0] not in ("Z", "X"):
            members.append(int(entry.name))
    return members


def _kill_pids(pids: Iterable[int], sig: int) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)


def _stop_group(pgid: int, *, grace: float, leader: subprocess.Popen[bytes] | None = None) -> None:
    """SIGTERM the live members of ``pgid``, then SIGKILL what is left after ``grace``."""

    def alive() -> list[int]:
        if leader is not None:
            leader.poll()  # reap our own child so it does not count as a member
        return _group_members(pgid)

    members = alive()
    if not members:
        return
    _kill_pids(members, signal.SIGTERM)
    deadline = time.monotonic() + grace
    while (members := alive()) and time.monotonic() < deadline:
        time.sleep(0.05)
    _kill_pids(members, signal.SIGKILL)


def _stop_process_group(proc: subprocess.Popen[bytes], *, grace: float = 5.0) -> None:
    """Stop a process started with ``start_new_session=True`` and everything in its group."""
    _stop_group(proc.pid, grace=grace, leader=proc)  # session leader: pgid == pid
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=5)


def _wait_until(predicate: Any, timeout: float, what: str, *, interval: float = 0.05) -> Any:
    """Poll ``predicate()`` until it returns a truthy value or ``timeout`` elapses."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise TimeoutError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


def _tail(path: Path, limit: int = 4000) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return ""
    return text[-limit:]


def _make_workdir(prefix: str, base_dir: Path | None) -> Path:
    """A fresh temp dir, mode 0755 so unprivileged daemons (user postfix) can traverse it."""
    path = Path(tempfile.mkdtemp(prefix=prefix, dir=None if base_dir is None else str(base_dir)))
    path.chmod(0o755)
    return path


def _remove_workdir(path: Path) -> None:
    if os.environ.get(KEEP_ENV) == "1":
        return
    shutil.rmtree(path, ignore_errors=True)


# --------------------------------------------------------------------------------------------
# DNS: Unbound serving local data only

_RECORD_RE = re.compile(
    r"^\s*(?P<name>\S+)\s+(?:(?P<ttl>\d+)\s+)?(?:(?P<cls>IN)\s+)?(?P<type>[A-Za-z][A-Za-z0-9]*)"
    r"(?:\s+(?P<rdata>.*?))?\s*$",
    re.IGNORECASE,
)
_NAME_RE = re.compile(r"^[A-Za-z0-9_*.\-]+$")
_DDD_RE = re.compile(r"[0-9]{3}")


def _absolute_name(name: str) -> str:
    """Validate a DNS name for the unbound config and make it absolute."""
    if not _NAME_RE.match(name):
        raise ValueError(f"unsupported DNS name: {name!r}")
    return name if name.endswith(".") else name + "."


def _unescape_into(text: str, i: int, buf: bytearray) -> int:
    """Decode the zone-file escape at ``text[i]`` (a backslash); return the next index."""
    if i + 1 >= len(text):
        raise ValueError(f"dangling backslash in {text!r}")
    ddd = text[i + 1 : i + 4]
    if _DDD_RE.fullmatch(ddd):
        value = int(ddd)
        if value > 255:
            raise ValueError(f"bad escape \\{ddd} in {text!r}")
        buf.append(value)
        return i + 4
    buf += text[i + 1].encode()
    return i + 2


def parse_character_strings(rdata: str) -> list[bytes]:
    """Split TXT rdata into its character-strings (quoted or bare, zone-file escapes)."""
    out: list[bytes] = []
    i, n = 0, len(rdata)
    while i < n:
        if rdata[i].isspace():
            i += 1
            continue
        buf = bytearray()
        if rdata[i] == '"':
            i += 1
            while True:
                if i >= n:
                    raise ValueError(f"unterminated quoted string in {rdata!r}")
                c = rdata[i]
                if c == '"':
                    i += 1
                    break
                if c == "\\":
                    i = _unescape_into(rdata, i, buf)
                else:
                    buf += c.encode()
                    i += 1
        else:
            while i < n and not rdata[i].isspace():
                c = rdata[i]
                if c == '"':
                    raise ValueError(f"stray quote in {rdata!r}")
                if c == "\\":
                    i = _unescape_into(rdata, i, buf)
                else:
                    buf += c.encode()
                    i += 1
        out.append(bytes(buf))
    return out


def _quote_character_string(data: bytes) -> str:
    """Quote one character-string; escape anything unsafe inside unbound's single quotes."""
    parts: list[str] = []
    for b in data:
        if 0x20 <= b < 0x7F and b not in b"\"\\'":
            parts.append(chr(b))
        else:
            parts.append(f"\\{b:03d}")
    return '"' + "".join(parts) + '"'


def txt_rdata(strings: Iterable[bytes]) -> str:
    """TXT rdata text with every string cut into chunks of at most 255 bytes."""
    chunks: list[bytes] = []
    for s in strings:
        if not s:
            chunks.append(b"")
        chunks.extend(s[i : i + 255] for i in range(0, len(s), 255))
    if not chunks:
        chunks = [b""]
    return " ".join(_quote_character_string(c) for c in chunks)


def unbound_local_data(record: str, default_ttl: int = 300) -> str:
    """Translate ``name [TTL] [IN] TYPE rdata`` into an unbound ``local-data:`` line."""
    m = _RECORD_RE.match(record)
    if m is None or m.group("rdata") is None:
        raise ValueError(f"cannot parse DNS record: {record!r}")
    name = _absolute_name(m.group("name"))
    ttl = int(m.group("ttl")) if m.group("ttl") else default_ttl
    rdtype = dns.rdatatype.from_text(m.group("type").upper())
    type_text = dns.rdatatype.to_text(rdtype)
    rdata = m.group("rdata")
    if rdtype in (dns.rdatatype.TXT, dns.rdatatype.SPF):
        rdata = txt_rdata(parse_character_strings(rdata))
    elif "'" in rdata:
        raise ValueError(f"single quote not supported in rdata: {record!r}")
    # Let dnspython validate the rdata so a typo fails here, not as a silent NXDOMAIN.
    try:
        dns.rdata.from_text(dns.rdataclass.IN, rdtype, rdata)
    except dns.exception.DNSException as exc:
        raise ValueError(f"invalid rdata in {record!r}: {exc}") from exc
    return f"local-data: '{name} {ttl} IN {type_text} {rdata}'"


def _record_lines(records: Iterable[str] | str) -> list[str]:
    lines = records.splitlines() if isinstance(records, str) else list(records)
    return [ln.strip() for ln in lines if ln.strip() and not ln.lstrip().startswith(";")]


class _Service:
    """Lifecycle shared by the servers here: ``start``/``stop`` are theirs; restarting keeps the
    ports, config and data (a DNS outage and its recovery, a Postfix restart)."""

    workdir: Path

    def start(self) -> None:
        raise NotImplementedError

    def stop(self) -> None:
        raise NotImplementedError

    def restart(self) -> None:
        """Stop and start again with the same ports and configuration."""
        self.stop()
        self.start()

    def close(self) -> None:
        """Stop and remove the temp dir (kept when MAILSEC_E2E_KEEP=1)."""
        self.stop()
        _remove_workdir(self.workdir)

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def unbound_server_options(host: str, port: int, workdir: Path, *,
                           verbosity: int = 0) -> list[str]:
    """The ``server:`` lines every private Unbound here shares: loopback only, foreground, no
    chroot or user switch, logs and pid in ``workdir``, one thread (the test zone server and the
    benchmark's caching forwarder both start from these)."""
    return [
        "server:",
        f"    verbosity: {verbosity}",
        f"    interface: {host}",
        f"    port: {port}",
        "    interface-automatic: no",
        "    do-ip4: yes",
        "    do-ip6: no",
        "    do-udp: yes",
        "    do-tcp: yes",
        "    do-daemonize: no",
        "    use-syslog: no",
        f'    logfile: "{workdir}/unbound.log"',
        '    chroot: ""',
        '    username: ""',
        f'    directory: "{workdir}"',
        f'    pidfile: "{workdir}/unbound.pid"',
        "    num-threads: 1",
        "    so-reuseport: no",
        "    access-control: 0.0.0.0/0 refuse",
        "    access-control: 127.0.0.0/8 allow",
    ]


class DnsServer(_Service):
    """A real Unbound on 127.0.0.1 that answers only from the given records, never recursing.

    ``records`` are zone lines ``name [TTL] [IN] TYPE rdata``; names under ``timeout_names``
    get no answer at all (``local-zone deny``), names under ``refuse_names`` get REFUSED.
    Do not put records below a timeout/refuse name: unbound would answer them.
    """

    def __init__(
        self,
        records: Iterable[str] | str = (),
        *,
        timeout_names: Iterable[str] = (),
        refuse_names: Iterable[str] = (),
        port: int | None = None,
        base_dir: Path | None = None,
        start_timeout: float = 10.0,
    ) -> None:
        self.host = LOOPBACK
        self.port = port if port is not None else free_port(udp=True)
        self.start_timeout = start_timeout
        self.workdir = _make_workdir("mailsec-e2e-dns-", base_dir)
        self.conf_path = self.workdir / "unbound.conf"
        self.log_path = self.workdir / "unbound.log"
        self._out_path = self.workdir / "unbound.out"
        self._proc: subprocess.Popen[bytes] | None = None
        self._records: list[str] = []
        self._timeout_names: list[str] = []
        self._refuse_names: list[str] = []
        try:
            self._configure(records, timeout_names, refuse_names)
        except BaseException:
            _remove_workdir(self.workdir)
            raise

    # -- configuration

    def _configure(
        self,
        records: Iterable[str] | str,
        timeout_names: Iterable[str],
        refuse_names: Iterable[str],
    ) -> None:
        self._records = _record_lines(records)
        self._timeout_names = [_absolute_name(n) for n in timeout_names]
        self._refuse_names = [_absolute_name(n) for n in refuse_names]
        self.conf_path.write_text(self.render_config())
        _run([_bin(UNBOUND_CHECKCONF), str(self.conf_path)], timeout=15)

    def render_config(self) -> str:
        """The unbound.conf text for the current records."""
        lines = unbound_server_options(self.host, self.port, self.workdir, verbosity=1)
        lines += [
            "    outgoing-range: 16",
            '    module-config: "iterator"',
            "    do-not-query-localhost: yes",
            '    local-zone: "." static',
        ]
        lines += [f'    local-zone: "{n}" deny' for n in self._timeout_names]
        lines += [f'    local-zone: "{n}" refuse' for n in self._refuse_names]
        lines += [f"    {unbound_local_data(r)}" for r in self._records]
        lines += ["remote-control:", "    control-enable: no", ""]
        return "\n".join(lines)

    def set_records(
        self,
        records: Iterable[str] | str,
        *,
        timeout_names: Iterable[str] | None = None,
        refuse_names: Iterable[str] | None = None,
    ) -> None:
        """Replace the zone data (and optionally the timeout/refuse names); restart if running."""
        self._configure(
            records,
            self._timeout_names if timeout_names is None else timeout_names,
            self._refuse_names if refuse_names is None else refuse_names,
        )
        if self.running:
            self.restart()

    # -- lifecycle

    @property
    def address(self) -> str:
        """``127.0.0.1:PORT``."""
        return f"{self.host}:{self.port}"

    @property
    def running(self) -> bool:
        """Whether the unbound process is alive."""
        return self._proc is not None and self._proc.poll() is None

    @property
    def pid(self) -> int | None:
        """PID of the running unbound, if any."""
        return self._proc.pid if self.running and self._proc is not None else None

    def start(self) -> None:
        """Start unbound on the same port and wait until it answers a query."""
        if self.running:
            return
        with self._out_path.open("ab") as out:
            self._proc = subprocess.Popen(
                [_bin(UNBOUND), "-c", str(self.conf_path)],
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                cwd=self.workdir,
            )
        try:
            self._wait_ready()
        except BaseException:
            self.stop()
            raise

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + self.start_timeout
        probe = dns.message.make_query("localhost.", "A")
        while True:
            proc = self._proc
            if proc is None or proc.poll() is not None:
                raise HarnessError(
                    f"unbound exited early (rc={None if proc is None else proc.returncode})\n"
                    f"{_tail(self._out_path)}\n{_tail(self.log_path)}"
                )
            try:
                dns.query.udp(probe, self.host, port=self.port, timeout=0.2)
                return
            except (dns.exception.Timeout, OSError):
                pass
            if time.monotonic() >= deadline:
                raise HarnessError(
                    f"unbound did not answer within {self.start_timeout}s\n{_tail(self.log_path)}"
                )
            time.sleep(0.05)

    def stop(self) -> None:
        """Stop unbound (its whole process group); the port and config are kept."""
        if self._proc is not None:
            _stop_process_group(self._proc)
            self._proc = None


    # -- client helpers

    def query(
        self, name: str, rdtype: str = "A", *, timeout: float = 2.0, tcp: bool = False
    ) -> dns.message.Message:
        """Send one query to this server; raises ``dns.exception.Timeout`` on no answer."""
        q = dns.message.make_query(name, rdtype, use_edns=0, payload=1232)
        if tcp:
            return dns.query.tcp(q, self.host, port=self.port, timeout=timeout)
        return dns.query.udp(q, self.host, port=self.port, timeout=timeout)

    def resolver(self, *, timeout: float = 1.0, lifetime: float = 2.0) -> dns.resolver.Resolver:
        """A dnspython resolver that uses only this server."""
        r = dns.resolver.Resolver(configure=False)
        r.nameservers = [self.host]
        r.port = self.port
        r.timeout = timeout
        r.lifetime = lifetime
        return r


# --------------------------------------------------------------------------------------------
# SMTP client results


@dataclass(frozen=True)
class SmtpReply:
    """One SMTP reply: numeric code and text (multi-line text joined with newlines)."""

    code: int
    text: str

    @property
    def ok(self) -> bool:
        """2xx or 3xx."""
        return 200 <= self.code < 400

    def __str__(self) -> str:
        return f"{self.code} {self.text}"


_QUEUED_RE = re.compile(r"queued as ([0-9A-Za-z]+)")


@dataclass
class SmtpOutcome:
    """What the server replied at each stage of one SMTP session (never raises on 4xx/5xx)."""

    banner: SmtpReply | None = None
    ehlo: SmtpReply | None = None
    xclient: SmtpReply | None = None
    starttls: SmtpReply | None = None
    tls_version: str | None = None
    mail: SmtpReply | None = None
    rcpts: dict[str, SmtpReply] = field(default_factory=dict)
    data_command: SmtpReply | None = None
    data: SmtpReply | None = None  # the end-of-DATA reply: the milter's verdict shows here
    error: str | None = None  # connection lost, timeout, TLS failure, ...

    @property
    def accepted(self) -> bool:
        """Whether the message was accepted (250 after end of DATA)."""
        return self.data is not None and self.data.code == 250

    @property
    def queue_id(self) -> str | None:
        """Postfix queue id from ``250 2.0.0 Ok: queued as ID``."""
        if self.data is None:
            return None
        m = _QUEUED_RE.search(self.data.text)
        return m.group(1) if m else None

    @property
    def last_reply(self) -> SmtpReply | None:
        """The last reply received in the session."""
        order = [self.banner, self.ehlo, self.xclient, self.starttls, self.mail]
        order += [*self.rcpts.values(), self.data_command, self.data]
        seen = [r for r in order if r is not None]
        return seen[-1] if seen else None


def _reply(code: int, text: bytes | str) -> SmtpReply:
    if isinstance(text, bytes):
        text = text.decode("utf-8", errors="replace")
    return SmtpReply(code, text)


def _crlf(data: bytes) -> bytes:
    return re.sub(rb"\r?\n", b"\r\n", data)


def _dot_stuff(data: bytes) -> bytes:
    stuffed = re.sub(rb"(?m)^\.", b"..", data)
    if not stuffed.endswith(b"\r\n"):
        stuffed += b"\r\n"
    return stuffed + b".\r\n"


def _insecure_tls_context() -> ssl.SSLContext:
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    return ctx


class _Client(smtplib.SMTP):
    """smtplib.SMTP that keeps the greeting (the constructor swallows it)."""

    greeting: tuple[int, bytes] | None = None

    def connect(
        self, host: str = "localhost", port: int = 0, source_address: Any = None
    ) -> tuple[int, bytes]:
        reply = super().connect(host, port, source_address)
        self.greeting = reply
        return reply


def smtp_send(
    host: str,
    port: int,
    message: bytes | str,
    mail_from: str,
    rcpts: Sequence[str],
    *,
    starttls: bool = False,
    helo: str = "client.test.example",
    xclient: Mapping[str, str] | None = None,
    mail_options: Sequence[str] = (),
    timeout: float = 30.0,
    normalize_eol: bool = True,
) -> SmtpOutcome:
    """One SMTP session with smtplib; every reply is recorded, 4xx/5xx never raise."""
    out = SmtpOutcome()
    payload = message.encode("utf-8") if isinstance(message, str) else message
    if normalize_eol:
        payload = _crlf(payload)
    try:
        s = _Client(host, port, timeout=timeout)  # sets the TLS server_hostname too
    except smtplib.SMTPConnectError as exc:
        out.banner = _reply(exc.smtp_code, exc.smtp_error)
        return out
    except (smtplib.SMTPException, OSError) as exc:
        out.error = f"{type(exc).__name__}: {exc}"
        return out
    try:
        if s.greeting is None:  # smtplib sets it on connect; a real check, not an assert (-O)
            raise HarnessError(f"no SMTP greeting from {host}:{port}")
        out.banner = _reply(*s.greeting)
        out.ehlo = _reply(*s.ehlo(helo))
        if out.ehlo.code != 250:
            return out
        if xclient:
            attrs = dict(xclient)
            if "ADDR" in attrs and "NAME" not in attrs:
                attrs["NAME"] = "[UNAVAILABLE]"  # no reverse lookup of a made-up address
            out.xclient = _reply(
                *s.docmd("XCLIENT", " ".join(f"{k}={v}" for k, v in attrs.items()))
            )
            if out.xclient.code != 220:
                return out
            out.ehlo = _reply(*s.ehlo(helo))
            if out.ehlo.code != 250:
                return out
        if starttls:
            if not s.has_extn("starttls"):
                out.error = "server does not offer STARTTLS"
                return out
            out.starttls = _reply(*s.starttls(context=_insecure_tls_context()))
            if out.starttls.code != 220:
                return out
            sock = s.sock
            out.tls_version = sock.version() if isinstance(sock, ssl.SSLSocket) else None
            out.ehlo = _reply(*s.ehlo(helo))
            if out.ehlo.code != 250:
                return out
        out.mail = _reply(*s.mail(mail_from, list(mail_options)))
        if out.mail.code != 250:
            return out
        for rcpt in rcpts:
            out.rcpts[rcpt] = _reply(*s.rcpt(rcpt))
        out.data_command = _reply(*s.docmd("DATA"))
        if out.data_command.code != 354:
            return out
        s.send(_dot_stuff(payload))
        out.data = _reply(*s.getreply())
    except (smtplib.SMTPException, OSError) as exc:  # ssl.SSLError and timeouts are OSError
        out.error = f"{type(exc).__name__}: {exc}"
    finally:
        with contextlib.suppress(smtplib.SMTPException, OSError):
            s.quit()
        s.close()
    return out


# --------------------------------------------------------------------------------------------
# smtp-sink captures

_SINK_TEMPLATE = "msg-%Y%m%d%H%M%S."


@dataclass(frozen=True)
class SinkMessage:
    """One message captured by smtp-sink, its envelope, and its content as Postfix sent it.

    ``content`` has LF line endings (smtp-sink drops CRs) and no smtp-sink headers.
    """

    path: Path
    mail_args: str
    rcpt_args: tuple[str, ...]
    helo: str | None
    client_addr: str
    content: bytes

    @property
    def mail_from(self) -> str:
        """Envelope sender without the angle brackets or ESMTP parameters."""
        return _strip_address(self.mail_args)

    @property
    def rcpts(self) -> list[str]:
        """Envelope recipients without the angle brackets or ESMTP parameters."""
        return [_strip_address(a) for a in self.rcpt_args]

    def parsed(self) -> email.message.Message:
        """The content parsed with the compat32 policy (headers kept verbatim)."""
        return email.message_from_bytes(self.content, policy=email.policy.compat32)

    def header(self, name: str) -> list[str]:
        """All values of header ``name`` (top to bottom), unfolded."""
        values = self.parsed().get_all(name) or []
        return [re.sub(r"\r?\n[ \t]+", " ", str(v)).strip() for v in values]

    @property
    def message_id(self) -> str | None:
        """The Message-ID without angle brackets."""
        ids = self.header("Message-ID")
        return ids[0].strip().strip("<>") if ids else None

    @property
    def header_block(self) -> bytes:
        """The raw header section (up to the first empty line)."""
        head, _, _ = self.content.partition(b"\n\n")
        return head + b"\n"


def _strip_address(args: str) -> str:
    m = re.match(r"\s*<([^>]*)>", args)
    return m.group(1) if m else args.split()[0] if args.split() else ""


def parse_sink_file(path: Path, data: bytes) -> SinkMessage:
    """Split an smtp-sink ``-d`` capture into its envelope headers and the message."""
    lines = data.split(b"\n")
    mail_args = ""
    rcpt_args: list[str] = []
    helo: str | None = None
    client = ""
    i = 0
    while i < len(lines):
        line = lines[i].decode("utf-8", errors="replace")
        if line.startswith("X-Client-Addr: "):
            client = line.split(": ", 1)[1]
        elif line.startswith("X-Helo-Args: "):
            helo = line.split(": ", 1)[1]
        elif line.startswith("X-Mail-Args: "):
            mail_args = line.split(": ", 1)[1]
        elif line.startswith("X-Rcpt-Args: "):
            rcpt_args.append(line.split(": ", 1)[1])
        elif (
            line.startswith("Received: ") and i + 1 < len(lines) and b"(smtp-sink)" in lines[i + 1]
        ):
            i += 3  # the three-line smtp-sink Received header ends its own headers
            break
        elif not line.startswith("X-Client-Proto: "):
            raise HarnessError(f"unexpected smtp-sink capture format in {path}: {line!r}")
        i += 1
    content = b"\n".join(lines[i:])
    if content.endswith(b"\n\n"):
        content = content[:-1]  # smtp-sink appends an empty line after the message
    return SinkMessage(path, mail_args, tuple(rcpt_args), helo, client, content)


# --------------------------------------------------------------------------------------------
# Postfix


DEFAULT_TEST_MAIN_CF: dict[str, str] = {
    # Fast, bounded behaviour for tests; any key can be overridden with ``extra_main_cf``.
    "smtpd_error_sleep_time": "0s",
    "smtpd_soft_error_limit": "100",
    "smtpd_hard_error_limit": "100",
    "queue_run_delay": "1s",
    "minimal_backoff_time": "1s",
    "maximal_backoff_time": "2s",
    "smtp_connect_timeout": "5s",
    "milter_connect_timeout": "5s",
    "milter_command_timeout": "10s",
    "milter_content_timeout": "20s",
    "smtpd_timeout": "30s",
    # Lets a loopback test claim another client address (e.g. for SPF): XCLIENT ADDR=...
    "smtpd_authorized_xclient_hosts": "127.0.0.0/8",
    # Anything not in relay_domains must never leave the machine.
    "default_transport": "error:5.7.1 test instance: no delivery outside relay_domains",
    "local_transport": "error:5.7.1 test instance: no local delivery",
}


class PostfixInstance(_Service):
    """A private Postfix (own config, queue and log under a temp dir) relaying to smtp-sink.

    ``milter`` is the Postfix milter address, e.g. ``inet:127.0.0.1:8891`` or
    ``unix:/abs/path.sock`` (the socket must be reachable by user ``postfix``); ``None`` or
    ``""`` runs without a milter. ``extra_main_cf`` overrides/adds main.cf parameters;
    ``config_files`` are written into the config dir first (refer to them in ``extra_main_cf``
    as ``$config_directory/NAME``, e.g. a ``regexp:`` table for ``header_checks``).
    """

    def __init__(
        self,
        milter: str | None = None,
        *,
        milter_default_action: str = "tempfail",
        relay_domains: Sequence[str] = ("example.net",),
        extra_main_cf: Mapping[str, str] | None = None,
        config_files: Mapping[str, str] | None = None,
        smtp_port: int | None = None,
        sink_port: int | None = None,
        base_dir: Path | None = None,
        start_timeout: float = 30.0,
    ) -> None:
        self.milter = milter or ""
        self.milter_default_action = milter_default_action
        self.relay_domains = list(relay_domains)
        self.extra_main_cf = dict(extra_main_cf or {})
        self.config_files = dict(config_files or {})
        self.host = LOOPBACK
        self.smtp_port = smtp_port if smtp_port is not None else free_port()
        self.sink_port = sink_port if sink_port is not None else free_port()
        self.start_timeout = start_timeout
        self.workdir = _make_workdir("mailsec-e2e-postfix-", base_dir)
        self.config_dir = self.workdir / "config"
        self.queue_dir = self.workdir / "queue"
        self.data_dir = self.workdir / "data"
        self.tls_dir = self.workdir / "tls"
        self.sink_dir = self.workdir / "sink"
        self.maillog_path = self.workdir / "maillog"
        self._fg_log = self.workdir / "postfix-start-fg.log"
        self._sink_log = self.workdir / "smtp-sink.log"
        self._master: subprocess.Popen[bytes] | None = None  # the ``postfix start-fg`` wrapper
        self._master_pgid: int | None = None
        self._sink: subprocess.Popen[bytes] | None = None
        self._prepared = False
        self._sink_cache: dict[Path, SinkMessage] = {}

    # -- configuration

    def main_cf(self) -> dict[str, str]:
        """The main.cf parameters this instance is written with."""
        d = self._postconf_defaults()
        params: dict[str, str] = {
            "compatibility_level": "3.6",
            "queue_directory": str(self.queue_dir),
            "data_directory": str(self.data_dir),
            "daemon_directory": d["daemon_directory"],
            "command_directory": d["command_directory"],
            "meta_directory": d["meta_directory"],
            "shlib_directory": d["shlib_directory"],
            "mail_owner": "postfix",
            "setgid_group": "postdrop",
            "import_environment": (
                "MAIL_CONFIG MAIL_DEBUG MAIL_LOGTAG TZ LANG=C POSTLOG_SERVICE POSTLOG_HOSTNAME"
            ),
            "maillog_file": str(self.maillog_path),
            "maillog_file_prefixes": str(self.workdir),
            "inet_interfaces": self.host,
            "inet_protocols": "ipv4",
            "myhostname": "mx.test.example",
            "mydomain": "test.example",
            "myorigin": "$myhostname",
            "mydestination": "",
            "mynetworks": "127.0.0.0/8",
            "relay_domains": ", ".join(self.relay_domains),
            "relay_transport": f"smtp:[{self.host}]:{self.sink_port}",
            "smtp_dns_support_level": "disabled",
            "smtpd_relay_restrictions": "permit_mynetworks, permit_auth_destination, reject",
            "smtpd_milters": self.milter,
            "non_smtpd_milters": "$smtpd_milters",
            "milter_default_action": self.milter_default_action,
            "milter_protocol": "6",
            "smtpd_tls_security_level": "may",
            "smtpd_tls_cert_file": str(self.tls_dir / "cert.pem"),
            "smtpd_tls_key_file": str(self.tls_dir / "key.pem"),
            "smtpd_tls_received_header": "yes",
            "smtp_tls_security_level": "none",
            "alias_maps": "",
            "alias_database": "",
            "local_recipient_maps": "",
            "biff": "no",
            "smtputf8_enable": "no",
        }
        params.update(DEFAULT_TEST_MAIN_CF)
        params.update(self.extra_main_cf)
        return params

    _postconf_cache: dict[str, str] | None = None

    @classmethod
    def _postconf_defaults(cls) -> dict[str, str]:
        if cls._postconf_cache is None:
            names = ["daemon_directory", "command_directory", "meta_directory", "shlib_directory"]
            out = _run([_bin(POSTCONF), "-d", *names], timeout=15).stdout
            values: dict[str, str] = {}
            for line in out.splitlines():
                key, _, value = line.partition("=")
                values[key.strip()] = value.strip()
            missing = [n for n in names if not values.get(n)]
            if missing:
                raise HarnessError(f"postconf -d did not report {missing}")
            cls._postconf_cache = values
        return cls._postconf_cache

    def master_cf(self) -> str:
        """Debian's master.cf with chroot off everywhere and smtpd on 127.0.0.1:PORT."""
        src = Path("/etc/postfix/master.cf")
        if not src.is_file():
            src = Path("/usr/share/postfix/master.cf.dist")
        if not src.is_file():
            raise HarnessError("no master.cf template found")
        out: list[str] = []
        found_smtpd = False
        for line in src.read_text().splitlines():
            if not line or line[0] in "# \t":
                out.append(line)
                continue
            parts = line.split(None, 7)
            if len(parts) < 8:
                out.append(line)
                continue
            parts[4] = "n"  # chroot
            if parts[0] == "smtp" and parts[1] == "inet":
                parts[0] = f"{self.host}:{self.smtp_port}"
                found_smtpd = True
            out.append(" ".join(parts))
        if not found_smtpd:
            out.append(f"{self.host}:{self.smtp_port} inet n - n - - smtpd")
        return "\n".join(out) + "\n"

    def _write_main_cf(self) -> None:
        text = "".join(f"{k} = {v}\n" for k, v in self.main_cf().items())
        (self.config_dir / "main.cf").write_text(text)

    def _prepare(self) -> None:
        """Create dirs, TLS cert, config files and queue directories (once)."""
        for d in (self.config_dir, self.tls_dir, self.queue_dir):  # postfix chdirs to the queue
            d.mkdir(mode=0o755, exist_ok=True)
        self.sink_dir.mkdir(mode=0o755, exist_ok=True)
        shutil.chown(self.sink_dir, user="postfix")  # smtp-sink writes as postfix (-u)
        key, cert = self.tls_dir / "key.pem", self.tls_dir / "cert.pem"
        _run(
            [
                _bin(OPENSSL), "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
                "-subj", "/CN=mx.test.example", "-keyout", str(key), "-out", str(cert),
            ],
            timeout=60,
        )  # fmt: skip
        key.chmod(0o600)
        for name, text in self.config_files.items():
            if "/" in name or name in ("main.cf", "master.cf"):
                raise ValueError(f"bad config file name: {name!r}")
            (self.config_dir / name).write_text(text)
        self._write_main_cf()
        (self.config_dir / "master.cf").write_text(self.master_cf())
        # create-missing makes the queue/data dirs with the right owners. set-permissions is
        # not used: it would also chown/chmod the shared system binaries and meta files.
        self._postfix("post-install", "create-missing")
        self._postfix("check")
        self._prepared = True

    def _postfix(self, *args: str, timeout: float = 60.0, check: bool = True) -> str:
        proc = _run(
            [_bin(POSTFIX), "-c", str(self.config_dir), *args], timeout=timeout, check=check
        )
        return proc.stdout + proc.stderr

    def set_main_cf(self, params: Mapping[str, str], *, reload: bool = True) -> None:
        """Change main.cf parameters (e.g. ``smtpd_milters``) and reload a running Postfix."""
        self.extra_main_cf.update(params)
        if "smtpd_milters" in params:
            self.milter = params["smtpd_milters"]
        if "milter_default_action" in params:
            self.milter_default_action = params["milter_default_action"]
        if not self._prepared:
            return
        self._write_main_cf()
        if reload and self.running:
            self._postfix("reload")
            time.sleep(0.5)  # master restarts its children lazily; give it a moment

    # -- lifecycle

    @property
    def running(self) -> bool:
        """Whether the start-fg process is alive."""
        return self._master is not None and self._master.poll() is None

    @property
    def smtp_address(self) -> tuple[str, int]:
        """(host, port) of the private smtpd."""
        return (self.host, self.smtp_port)

    def start(self) -> None:
        """Start smtp-sink and Postfix (start-fg); wait for the 220 greeting."""
        if self.running:
            return
        if not self._prepared:
            self._prepare()
        try:
            self._start_sink()
            with self._fg_log.open("ab") as log:
                self._master = subprocess.Popen(
                    [_bin(POSTFIX), "-c", str(self.config_dir), "start-fg"],
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                    cwd=self.workdir,
                )
            self._wait_banner()
            self._master_pgid = self._find_master_pgid()
        except BaseException:
            self.stop()
            raise

    def _start_sink(self) -> None:
        if self._sink is not None and self._sink.poll() is None:
            return
        with self._sink_log.open("ab") as log:
            self._sink = subprocess.Popen(
                [
                    _bin(SMTP_SINK), "-u", "postfix", "-4", "-h", "sink.test.example",
                    "-d", str(self.sink_dir / _SINK_TEMPLATE),
                    f"{self.host}:{self.sink_port}", "256",
                ],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                cwd=self.workdir,
            )  # fmt: skip
        _wait_smtp_banner(self.host, self.sink_port, self._sink, self.start_timeout, self._sink_log)

    def _wait_banner(self) -> None:
        if self._master is None:
            raise HarnessError("Postfix master was not started")
        try:
            _wait_smtp_banner(
                self.host, self.smtp_port, self._master, self.start_timeout, self._fg_log
            )
        except HarnessError as exc:
            raise HarnessError(f"{exc}\nmaillog:\n{_tail(self.maillog_path)}") from exc

    def _find_master_pgid(self) -> int | None:
        """Process group of our master (from its pid file, identity checked), if running."""
        try:
            pid = int((self.queue_dir / "pid" / "master.pid").read_text().strip())
            exe = os.readlink(f"/proc/{pid}/exe")
            environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
        except (OSError, ValueError):
            return None
        master_bin = os.path.join(self._postconf_defaults()["daemon_directory"], "master")
        if os.path.realpath(exe) != os.path.realpath(master_bin):
            return None
        if f"MAIL_CONFIG={self.config_dir}".encode() not in environ:
            return None
        st = _proc_stat(pid)
        return None if st is None else st[1]

    def stop(self) -> None:
        """``postfix stop``, then kill leftovers by process group; stop smtp-sink."""
        wrapper = self._master
        if wrapper is not None:
            # master calls setsid(), so it is not in the start-fg wrapper's process group.
            group = self._master_pgid or self._find_master_pgid()
            if wrapper.poll() is None:
                self._postfix("stop", timeout=30, check=False)
                with contextlib.suppress(subprocess.TimeoutExpired):
                    wrapper.wait(timeout=15)
            if group is not None:
                _stop_group(group, grace=5.0)
            _stop_process_group(wrapper)
            self._master = None
            self._master_pgid = None
        if self._sink is not None:
            _stop_process_group(self._sink)
            self._sink = None


    # -- SMTP in

    def send(
        self,
        message: bytes | str,
        mail_from: str,
        rcpts: Sequence[str],
        *,
        starttls: bool = False,
        helo: str = "client.test.example",
        xclient: Mapping[str, str] | None = None,
        mail_options: Sequence[str] = (),
        timeout: float = 30.0,
    ) -> SmtpOutcome:
        """Submit one message over SMTP to the private smtpd; see :func:`smtp_send`."""
        return smtp_send(
            self.host,
            self.smtp_port,
            message,
            mail_from,
            list(rcpts),
            starttls=starttls,
            helo=helo,
            xclient=xclient,
            mail_options=mail_options,
            timeout=timeout,
        )

    def submit_local(
        self, message: bytes | str, mail_from: str, rcpts: Sequence[str], *,
        timeout: float = 30.0,
    ) -> subprocess.CompletedProcess[bytes]:
        """Submit as a local program does: Postfix's ``sendmail -C CONFIG_DIR -f FROM -- RCPTS``.

        The message goes through postdrop and pickup, so cleanup hands it to
        ``non_smtpd_milters`` (Postfix presents it there as ``localhost[127.0.0.1]``).
        ``-C`` with a private config directory is honoured for root only.
        """
        payload = message.encode("utf-8") if isinstance(message, str) else message
        cmd = [_bin(SENDMAIL), "-C", str(self.config_dir), "-i", "-f", mail_from, "--", *rcpts]
        try:
            proc = subprocess.run(cmd, input=payload.replace(b"\r\n", b"\n"),
                                  capture_output=True, timeout=timeout, check=False)
        except subprocess.TimeoutExpired as exc:
            raise HarnessError(f"timed out after {timeout}s: {' '.join(cmd)}") from exc
        if proc.returncode != 0:
            raise HarnessError(f"sendmail failed ({proc.returncode}): {proc.stderr!r}")
        return proc

    # -- SMTP out (smtp-sink)

    def _open_sink_files(self) -> set[str]:
        if self._sink is None or self._sink.poll() is not None:
            return set()
        fd_dir = Path(f"/proc/{self._sink.pid}/fd")
        open_files: set[str] = set()
        with contextlib.suppress(OSError):
            for fd in fd_dir.iterdir():
                with contextlib.suppress(OSError):
                    open_files.add(os.readlink(fd))
        return open_files

    def sink_messages(self) -> list[SinkMessage]:
        """All completely received messages in smtp-sink, oldest first."""
        try:
            names = sorted(p for p in self.sink_dir.iterdir() if p.is_file())
        except OSError:
            return []
        # A capture is complete once smtp-sink has closed it (listed before fds are read).
        busy = self._open_sink_files()
        found: list[tuple[int, SinkMessage]] = []
        for path in names:
            if str(path) in busy:
                continue
            try:
                st = path.stat()
                msg = self._sink_cache.get(path)
                if msg is None:
                    msg = parse_sink_file(path, path.read_bytes())
                    self._sink_cache[path] = msg
            except FileNotFoundError:  # transaction aborted, capture unlinked
                continue
            found.append((st.st_mtime_ns, msg))
        found.sort(key=lambda t: (t[0], str(t[1].path)))
        return [m for _, m in found]

    def wait_delivered(self, count: int, timeout: float = 15.0) -> list[bytes]:
        """Wait until smtp-sink holds ``count`` messages; return all their contents."""
        try:
            msgs: list[SinkMessage] = _wait_until(
                lambda: (m := self.sink_messages()) and len(m) >= count and m,
                timeout,
                f"{count} delivered message(s)",
            )
        except TimeoutError as exc:
            raise TimeoutError(f"{exc}\n{self.diagnostics()}") from exc
        return [m.content for m in msgs]

    def find_delivered(
        self, *, message_id: str | None = None, marker: bytes | str | None = None
    ) -> SinkMessage | None:
        """The first delivered message with this Message-ID and/or containing ``marker``."""
        if message_id is None and marker is None:
            raise ValueError("give message_id or marker")
        want_id = message_id.strip().strip("<>") if message_id is not None else None
        needle = marker.encode() if isinstance(marker, str) else marker
        for msg in self.sink_messages():
            if want_id is not None and msg.message_id != want_id:
                continue
            if needle is not None and needle not in msg.content:
                continue
            return msg
        return None

    def wait_for_message(
        self,
        *,
        message_id: str | None = None,
        marker: bytes | str | None = None,
        timeout: float = 15.0,
    ) -> SinkMessage:
        """Wait for :meth:`find_delivered` to find a message."""
        try:
            msg: SinkMessage = _wait_until(
                lambda: self.find_delivered(message_id=message_id, marker=marker),
                timeout,
                f"delivery of message_id={message_id!r} marker={marker!r}",
            )
        except TimeoutError as exc:
            raise TimeoutError(f"{exc}\n{self.diagnostics()}") from exc
        return msg

    def clear_sink(self) -> None:
        """Delete captured messages that are complete."""
        for msg in self.sink_messages():
            with contextlib.suppress(FileNotFoundError):
                msg.path.unlink()
            self._sink_cache.pop(msg.path, None)

    # -- queue and log

    def queue(self) -> list[dict[str, Any]]:
        """``postqueue -j``: one dict per queued message (all queues)."""
        out = _run([_bin(POSTQUEUE), "-c", str(self.config_dir), "-j"], timeout=15).stdout
        return [json.loads(line) for line in out.splitlines() if line.strip()]

    def hold_queue(self) -> list[str]:
        """Queue ids of messages in the hold queue."""
        return [str(e["queue_id"]) for e in self.queue() if e.get("queue_name") == "hold"]

    def postcat(self, queue_id: str, *options: str) -> str:
        """``postcat -c DIR [options] -q ID`` output (e.g. options ``-h`` or ``-b``)."""
        cmd = [_bin(POSTCAT), "-c", str(self.config_dir), *options, "-q", queue_id]
        return _run(cmd, timeout=15).stdout

    def postsuper(self, *args: str) -> str:
        """Run ``postsuper -c DIR args`` (e.g. ``-H ID`` to release, ``-d ALL``)."""
        return _run([_bin(POSTSUPER), "-c", str(self.config_dir), *args], timeout=15).stderr

    def flush(self) -> None:
        """``postqueue -f``: attempt delivery of all deferred mail now."""
        _run([_bin(POSTQUEUE), "-c", str(self.config_dir), "-f"], timeout=15)

    def maillog(self) -> str:
        """The whole maillog so far."""
        try:
            return self.maillog_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def wait_log(self, pattern: str, timeout: float = 15.0) -> re.Match[str]:
        """Wait until ``pattern`` (a regex) matches somewhere in the maillog."""
        rx = re.compile(pattern)
        try:
            m: re.Match[str] = _wait_until(
                lambda: rx.search(self.maillog()), timeout, f"maillog /{pattern}/"
            )
        except TimeoutError as exc:
            raise TimeoutError(f"{exc}\n{self.diagnostics()}") from exc
        return m

    def diagnostics(self) -> str:
        """A short state dump for failure messages."""
        return (
            f"--- maillog tail ({self.maillog_path}):\n{_tail(self.maillog_path)}\n"
            f"--- sink dir: {sorted(p.name for p in self.sink_dir.glob('*'))}"
        )


def _wait_smtp_banner(
    host: str, port: int, proc: subprocess.Popen[bytes], timeout: float, log: Path
) -> None:
    """Wait until ``host:port`` greets with 220; fail early if ``proc`` dies."""
    deadline = time.monotonic() + timeout
    last = ""
    while True:
        if proc.poll() is not None:
            raise HarnessError(f"{proc.args!r} exited early (rc={proc.returncode})\n{_tail(log)}")
        try:
            with socket.create_connection((host, port), timeout=2) as s:
                s.settimeout(2)
                banner = s.recv(512)
                if banner.startswith(b"220"):
                    with contextlib.suppress(OSError):
                        s.sendall(b"QUIT\r\n")
                    return
                last = banner.decode(errors="replace")
        except OSError as exc:
            last = str(exc)
        if time.monotonic() >= deadline:
            raise HarnessError(
                f"no 220 from {host}:{port} within {timeout}s ({last})\n{_tail(log)}"
            )
        time.sleep(0.05)
