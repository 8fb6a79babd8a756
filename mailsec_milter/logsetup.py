"""Where log lines go and what they look like: stderr or syslog, ``mailsec-milter[PID]:``, logfmt.

Owns: the handler and formatters the supervisor installs (forked workers inherit them), the
ident and the PID in every line, the syslog facility, and ``logfmt``, the one quoting of values
in a line. Must not: decide what is logged or when (the modules that log do), or read the
configuration file (it gets Settings values).

Conventions are Postfix's, so our lines sit next to its own in /var/log/mail.log: the syslog
ident ``mailsec-milter`` with the PID of the process that logged (supervisor or worker),
``warning:``/``error:`` before such messages, and the per-message line starting with the
queue id (milter.py).
"""

from __future__ import annotations

import logging
import logging.handlers
import os
import sys
import time

IDENT = "mailsec-milter"

FACILITIES: dict[str, int] = {
    "mail": logging.handlers.SysLogHandler.LOG_MAIL,
    "daemon": logging.handlers.SysLogHandler.LOG_DAEMON,
    "user": logging.handlers.SysLogHandler.LOG_USER,
    **{f"local{n}": logging.handlers.SysLogHandler.LOG_LOCAL0 + n for n in range(8)},
}

# What Postfix writes before a message of that severity (info has none).
_SEVERITY_PREFIX = {"WARNING": "warning: ", "ERROR": "error: ", "CRITICAL": "fatal: "}

# Written here once per process; a forked worker updates it (os.getpid() is a system call).
_pid = os.getpid()


def _after_fork() -> None:
    global _pid
    _pid = os.getpid()


os.register_at_fork(after_in_child=_after_fork)


# --------------------------------------------------------------------------------------------
# logfmt

_ESCAPES = {'"': '\\"', "\\": "\\\\", "\n": "\\n", "\r": "\\r", "\t": "\\t"}
_NEEDS_QUOTES = frozenset(' "=\\')


def logfmt(value: object) -> str:
    """One value as logfmt writes it: bare when it has no space, quote, backslash, ``=`` or
    unprintable character; otherwise in double quotes with backslash escapes (``\\"``,
    ``\\\\``, ``\\n``, ``\\r``, ``\\t``, ``\\xNN``/``\\uNNNN``). Values come from the SMTP
    client (HELO, MAIL FROM, header text), so nothing in them can end the line or fake a key."""
    text = str(value)
    if text and text.isprintable() and not _NEEDS_QUOTES.intersection(text):
        return text
    out = []
    for char in text:
        if char in _ESCAPES:
            out.append(_ESCAPES[char])
        elif not char.isprintable() or "\ud800" <= char <= "\udfff":
            code = ord(char)
            out.append(f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}")
        else:
            out.append(char)
    return '"' + "".join(out) + '"'


def logfmt_pairs(pairs: list[tuple[str, object]]) -> str:
    """``key=value key=value``, every value through ``logfmt``."""
    return " ".join(f"{key}={logfmt(value)}" for key, value in pairs)


# --------------------------------------------------------------------------------------------
# formatters


class _SecondCache:
    """A time text made once per second instead of per record (``time.strftime`` showed up
    in the per-message profile)."""

    def __init__(self, pattern: str) -> None:
        self.pattern = pattern
        self.second = -1
        self.text = ""

    def text_for(self, created: float) -> str:
        second = int(created)
        if second != self.second:
            self.second, self.text = second, time.strftime(self.pattern, time.localtime(second))
        return self.text


class StderrFormatter(logging.Formatter):
    """``2026-12-08 02:34:36,123 INFO mailsec-milter[PID]: message``."""

    def __init__(self) -> None:
        super().__init__()
        self._clock = _SecondCache("%Y-%m-%d %H:%M:%S")

    def format(self, record: logging.LogRecord) -> str:
        text = (f"{self._clock.text_for(record.created)},{int(record.msecs):03d} "
                f"{record.levelname} {IDENT}[{_pid}]: {record.getMessage()}")
        return _with_exception(self, record, text)


class SyslogFormatter(logging.Formatter):
    """The part of an RFC 3164 datagram after ``<PRI>``: ``Mmm dd hh:mm:ss ident[PID]: msg``,
    as glibc's syslog(3) writes it to /dev/log, and Postfix's ``warning:`` prefixes."""

    def __init__(self) -> None:
        super().__init__()
        self._clock = _SecondCache("%b %e %H:%M:%S")

    def format(self, record: logging.LogRecord) -> str:
        text = (f"{self._clock.text_for(record.created)} {IDENT}[{_pid}]: "
                f"{_SEVERITY_PREFIX.get(record.levelname, '')}{record.getMessage()}")
        return _with_exception(self, record, text)


def _with_exception(formatter: logging.Formatter, record: logging.LogRecord, text: str) -> str:
    if record.exc_info and not record.exc_text:
        record.exc_text = formatter.formatException(record.exc_info)
    return f"{text}\n{record.exc_text}" if record.exc_text else text


class LogSetupError(RuntimeError):
    """The log target cannot be used (e.g. no syslog socket); the message says what to do."""


def syslog_handler(path: str, facility: str) -> logging.handlers.SysLogHandler:
    """A handler sending RFC 3164 datagrams to the local syslog socket ``path``."""
    handler = logging.handlers.SysLogHandler(address=path, facility=FACILITIES[facility])
    try:
        sock = getattr(handler, "socket", None)
        if sock is None or sock.fileno() < 0:  # the handler ignores a failed connect
            handler._connect_unixsocket(path)  # type: ignore[attr-defined]  # to get the error
    except OSError as exc:
        handler.close()
        raise LogSetupError(
            f"[log] target = \"syslog\": cannot reach the syslog socket {path} "
            f"({exc.strerror or exc}); is a syslog daemon or journald running? Set "
            "[log] syslog_socket, or target = \"stderr\"") from None
    handler.append_nul = False  # as syslog(3): rsyslog and journald take the datagram as is
    handler.setFormatter(SyslogFormatter())
    return handler


def setup_logging(level: str, target: str = "stderr", facility: str = "mail",
                  syslog_socket: str = "/dev/log") -> None:
    """Install the one handler on the root logger. Every message logs one line, so that path
    is kept short with the switches Python's logging docs give ("Optimization"): no caller
    file/line and no thread or process names are looked up (the PID comes from ``_pid``)."""
    logging._srcfile = None  # no stack walk per record to find the caller
    logging.logThreads = False
    logging.logProcesses = False
    logging.logMultiprocessing = False
    handler: logging.Handler
    if target == "syslog":
        handler = syslog_handler(syslog_socket, facility)
    else:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(StderrFormatter())
    root = logging.getLogger()
    for old in root.handlers:
        old.close()
    root.handlers[:] = [handler]
    root.setLevel(getattr(logging, level.upper(), logging.INFO))


def log_fds() -> set[int]:
    """File descriptors the log handlers write to: a forked worker must keep them open
    (closing one would let a later socket reuse the number and receive our log lines)."""
    fds: set[int] = set()
    for handler in logging.getLogger().handlers:
        sock = getattr(handler, "socket", None)  # SysLogHandler's; typeshed does not declare it
        if sock is not None and sock.fileno() >= 0:
            fds.add(sock.fileno())
    return fds
