"""The milter adapter: the milter callbacks (pymilter over libmilter); worker.py wires them in.

Owns: copying callback arguments and macros into a per-message builder, starting early checks,
and turning a Verdict plus the rendered header into milter actions (delete forged A-R fields,
insert ours at the top, reply).
Must not: decide anything (policy.py does) or render header text (authres.py does).

pymilter pitfalls handled here (LIBRARY-NOTES.md), each with a test:
- ``setsymlist`` is broken on Python 3 and a failure silently negotiates "all options"; we
  override it to pass one space-separated ``str``.
- ``data()`` is implemented and answered, so the last event before the body is one the milter
  replies to (removes Postfix's Nagle stall); the other pre-body events are ``@noreply``.
- Headers are read as bytes with leading space preserved, so DKIM ``c=simple`` sees them exactly.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any, TypeVar, cast

import Milter

from . import authres
from .config import Reply, Settings
from .engine import Analysis, Engine, MessageRun, PendingSpf
from .logsetup import logfmt, logfmt_pairs
from .metrics import Metrics
from .model import Envelope, Header, MessageSnapshot, TlsInfo, normalise_ip
from .policy import Action, Verdict, decide
from .reports.recorder import Recorder

log = logging.getLogger("mailsec_milter.milter")

AR_HEADER = "Authentication-Results"

# Macros we ask the MTA for, per stage. TLS state is read at MAIL FROM: after STARTTLS the
# client says EHLO again, and only from MAIL FROM on do the macros describe the session the
# message travels over.
CONNECT_MACROS = ("j", "{daemon_name}", "{client_addr}")
ENVFROM_MACROS = ("i", "{auth_type}", "{auth_authen}", "{tls_version}", "{cipher}",
                  "{cipher_bits}", "{verify}", "{cert_subject}", "{cert_issuer}")
EOM_MACROS = ("i",)


@dataclass(frozen=True)
class Runtime:
    """What every session shares; swapped as a whole on reload."""

    settings: Settings
    engine: Engine
    metrics: Metrics
    recorder: Recorder | None = None  # aggregate-report recording, off the reply path


class _Shared:
    """Holder of the current Runtime, read at the start of each message, and the number of
    MTA connections open (a stopping worker waits for them to finish)."""

    lock = threading.Lock()
    runtime: Runtime | None = None
    open_sessions = 0
    draining = False


def start_draining() -> None:
    """Refuse new MTA connections (with a tempfail) while the ones open finish."""
    _Shared.draining = True


def open_sessions() -> int:
    return _Shared.open_sessions


def _count_session(delta: int) -> None:
    with _Shared.lock:
        _Shared.open_sessions += delta


def install_runtime(runtime: Runtime) -> Runtime | None:
    """Make ``runtime`` serve new messages; return the one it replaces."""
    with _Shared.lock:
        old, _Shared.runtime = _Shared.runtime, runtime
    return old


def current_runtime() -> Runtime:
    runtime = _Shared.runtime
    if runtime is None:
        raise RuntimeError("milter runtime not installed")
    return runtime


# pymilter is untyped: give its constants and decorators types once, here.
CONTINUE: int = Milter.CONTINUE
ACCEPT: int = Milter.ACCEPT
REJECT: int = Milter.REJECT
TEMPFAIL: int = Milter.TEMPFAIL

F = TypeVar("F", bound=Callable[..., int])


def noreply(func: F) -> F:
    """Tell the MTA not to wait for this event's reply (when it supports that)."""
    return cast(F, Milter.noreply(func))


def as_bytes(func: F) -> F:
    """Receive header values as the raw bytes the MTA sent."""
    return cast(F, Milter.decode("bytes")(func))


def _with_macros(func: Any, macros: tuple[str, ...]) -> Any:
    # Set the list directly: pymilter's @symlist refuses more than five names, a limit of old
    # Sendmail releases; Postfix and current Sendmail take the whole list.
    func._symlist = macros
    return func


def _escape_reply(text: str) -> str:
    return text.replace("%", "%%")


@dataclass
class _MessageState:
    """Mutable per-message builder; a fresh one at every MAIL FROM (Rule 3)."""

    envelope: Envelope
    run: MessageRun
    runtime: Runtime
    rcpts: list[str]
    headers: list[Header]
    header_bytes: int = 0
    body: bytearray | None = None
    body_too_large: bool = False
    headers_too_large: bool = False


@Milter.header_leading_space
class MailsecMilter(Milter.Base):  # type: ignore[misc]
    """One instance per SMTP connection (libmilter may call it from different threads)."""

    def __init__(self) -> None:
        self.client_ip: str | None = None
        self.client_name = ""
        self.helo_name = ""
        self.helo_check: PendingSpf | None = None
        self.message: _MessageState | None = None
        self.metrics: Metrics | None = None

    # --- negotiation -------------------------------------------------------------------------
    def setsymlist(self, stage: int, *macros: str) -> Any:
        """pymilter's version passes bytes where libmilter's binding wants one ``str``."""
        if not self._actions & Milter.SETSYMLIST:
            raise Milter.DisabledAction("SETSYMLIST")
        return self._ctx.setsymlist(stage, " ".join(macros))

    # --- SMTP stages ---------------------------------------------------------------------------
    def connect(self, hostname: str, family: Any, hostaddr: Any) -> int:
        # Answered (once per MTA connection, not per message) so a stopping worker can
        # refuse new connections while the open ones finish.
        if _Shared.draining:
            return TEMPFAIL  # stopping: the MTA defers this session; nothing is lost
        if self.metrics is None:
            self.metrics = current_runtime().metrics
            self.metrics.connection_opened()
            _count_session(+1)
        self.client_name = hostname or ""
        self.client_ip = None
        address = hostaddr[0] if isinstance(hostaddr, tuple) and hostaddr else None
        if address is None:
            address = self.getsymval("{client_addr}")
        if address:
            try:
                self.client_ip = normalise_ip(str(address))
            except ValueError:
                self.client_ip = None
        return CONTINUE

    connect = _with_macros(connect, CONNECT_MACROS)

    @noreply
    def hello(self, hostname: str) -> int:
        self.helo_name = hostname or ""
        self.helo_check = None
        runtime = current_runtime()
        if runtime.settings.spf_check_helo:
            self.helo_check = runtime.engine.start_helo_check(self.client_ip, self.helo_name)
        return CONTINUE

    @noreply
    def envfrom(self, mail_from: str, *params: str) -> int:
        self.message = None
        try:
            runtime = current_runtime()
            envelope = Envelope(
                client_ip=self.client_ip,
                client_name=self.client_name,
                helo=self.helo_name,
                mail_from=_strip_address(mail_from),
                queue_id=self._macro("i"),
                sasl_user=self._macro("{auth_authen}"),
                tls=self._tls_info(),
            )
            run = runtime.engine.begin(envelope, self.helo_check)
            self.message = _MessageState(envelope, run, runtime, [], [])
        except Exception:
            # No reply is awaited here (@noreply), so the failure is carried to end of
            # message, which tempfails a message without state (see eom).
            log.exception("internal error at MAIL FROM; the message will be tempfailed")
        return CONTINUE

    envfrom = _with_macros(envfrom, ENVFROM_MACROS)

    @noreply
    def envrcpt(self, rcpt: str, *params: str) -> int:
        if self.message is not None and len(self.message.rcpts) < 1000:
            self.message.rcpts.append(_strip_address(rcpt))
        return CONTINUE

    def data(self) -> int:
        # Answered on purpose (see module docstring): removes a ~40 ms stall per message.
        return CONTINUE

    @noreply
    @as_bytes
    def header(self, name: str, value: bytes) -> int:
        state = self.message
        if state is None:
            return CONTINUE
        raw = value if isinstance(value, bytes) else str(value).encode("utf-8", "surrogateescape")
        if not self._protocol & Milter.P_HDR_LEADSPC:
            raw = b" " + raw
        raw = raw.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")
        state.header_bytes += len(name) + len(raw) + 3
        if state.header_bytes > state.runtime.settings.max_header_bytes:
            state.headers_too_large = True
            return CONTINUE
        header = Header(name, raw)
        state.headers.append(header)
        try:
            state.run.saw_header(header)
        except Exception:  # a prefetch is an optimisation; its failure must not cost the message
            log.exception("prefetch failed for a %s header", name[:40])
        return CONTINUE

    @noreply
    def eoh(self) -> int:
        # Implemented (without a reply) because a message with no header fields at all goes
        # straight from DATA to the body; libmilter needs the EOH event to get there.
        return CONTINUE

    @noreply
    def body(self, chunk: bytes) -> int:
        state = self.message
        if state is None or state.body_too_large:
            return CONTINUE
        if state.body is None:
            state.body = bytearray()
        if len(state.body) + len(chunk) > state.runtime.settings.max_body_bytes:
            state.body_too_large = True
            state.body = bytearray()
        else:
            state.body.extend(chunk)
        return CONTINUE

    def eom(self) -> int:
        state = self.message
        self.message = None
        if state is None:
            # MAIL FROM failed (logged there) or never came: we know nothing about this
            # message, and never accept one with results we did not compute.
            try:
                return self._reply(current_runtime().settings.tempfail_reply, TEMPFAIL)
            except Exception:
                return TEMPFAIL
        try:
            return self._finish(state)
        except Exception:
            log.exception("internal error at end of message; tempfailing it")
            return self._reply(state.runtime.settings.tempfail_reply, TEMPFAIL)

    eom = _with_macros(eom, EOM_MACROS)

    def abort(self) -> int:
        self.message = None
        return CONTINUE

    def close(self) -> int:
        self.message = None
        if self.metrics is not None:
            self.metrics.connection_closed()
            self.metrics = None
            _count_session(-1)
        return CONTINUE

    # --- end of message ------------------------------------------------------------------------
    def _finish(self, state: _MessageState) -> int:
        started = time.perf_counter()
        settings = state.runtime.settings
        if state.headers_too_large:
            queue_id = state.envelope.queue_id or "NOQUEUE"
            log.warning("%s: queue_id=%s header block over max_header_bytes; tempfailing",
                        logfmt(queue_id), logfmt(queue_id))
            return self._reply(settings.tempfail_reply, TEMPFAIL)
        envelope = replace(state.envelope, rcpt_to=tuple(state.rcpts),
                           queue_id=self._macro("i") or state.envelope.queue_id)
        snapshot = MessageSnapshot(envelope, tuple(state.headers), bytes(state.body or b""))
        analysis = state.run.finish(snapshot, body_too_large=state.body_too_large)
        verdict = decide(analysis, envelope, settings)
        forged = authres.forged_indices(snapshot.headers, settings.authserv_id,
                                        settings.remove_subdomain_authserv_ids)
        log_message(envelope, analysis, verdict, len(forged))
        state.runtime.metrics.observe_message(analysis, verdict, len(forged),
                                              time.perf_counter() - started)
        if state.runtime.recorder is not None:  # a queue hand-off: never blocks, never raises
            state.runtime.recorder.offer(envelope, analysis, verdict)
        if verdict.action is Action.TEMPFAIL:
            return self._reply(verdict.reply or settings.tempfail_reply, TEMPFAIL)
        if verdict.action is Action.REJECT:
            return self._reply(verdict.reply or settings.reject_reply, REJECT)
        for index in forged:  # highest first: deleting never shifts an index still to delete
            self.chgheader(AR_HEADER, index, "")
        # Nobody outside may set our quarantine tag: drop incoming copies the same way.
        tags = _indices_named(snapshot.headers, settings.quarantine_header)
        for index in tags:
            self.chgheader(settings.quarantine_header, index, "")
        self._add_header(AR_HEADER, authres.render(settings.authserv_id,
                                                   authres.results_for(analysis, verdict)))
        if verdict.action is Action.QUARANTINE:
            reason = verdict.detail or "mailsec-milter policy"
            if settings.quarantine_method in ("tag", "both"):
                self._add_header(settings.quarantine_header, f"yes ({reason})"[:200])
            if settings.quarantine_method in ("hold", "both"):
                self.quarantine(reason[:200])
        return ACCEPT

    def _add_header(self, name: str, value: str) -> None:
        if self._protocol & Milter.P_HDR_LEADSPC:
            value = " " + value
        self.addheader(name, value, 0)

    def _reply(self, reply: Reply, code: int) -> int:
        self.setreply(reply.code, reply.status, _escape_reply(reply.text))
        return code

    def _macro(self, name: str) -> str | None:
        try:
            value = self.getsymval(name)
        except Exception:
            return None
        return str(value) if value else None

    def _tls_info(self) -> TlsInfo:
        bits_text = self._macro("{cipher_bits}")
        # isascii(): "²".isdigit() is True but int("²") raises (found by the protocol fuzzing).
        bits = (int(bits_text) if bits_text and bits_text.isascii() and bits_text.isdigit()
                and len(bits_text) < 7 else None)
        return TlsInfo(
            version=self._macro("{tls_version}"),
            cipher=self._macro("{cipher}"),
            cipher_bits=bits,
            verify=self._macro("{verify}"),
            cert_subject=self._macro("{cert_subject}"),
            cert_issuer=self._macro("{cert_issuer}"),
        )


def _indices_named(headers: tuple[Header, ...], name: str) -> list[int]:
    """1-based per-name indices of the headers called ``name``, highest first."""
    count = sum(1 for h in headers if h.is_named(name))
    return list(range(count, 0, -1))


def _strip_address(text: str) -> str:
    value = (text or "").strip()
    if value.startswith("<") and value.endswith(">"):
        value = value[1:-1]
    return value.strip()


def log_message(envelope: Envelope, analysis: Analysis, verdict: Verdict, forged: int) -> None:
    """Rule 8: one line per message with queue id, client, identities, every result, verdict.

    It starts with ``QUEUEID:`` as Postfix's own lines do (``NOQUEUE:`` without one), so
    ``grep QUEUEID /var/log/mail.log`` shows both; the rest is logfmt (logsetup.logfmt)."""
    dkim = ",".join(f"{s.result.value}:{s.domain or '-'}" for s in analysis.dkim.signatures)
    dmarc = analysis.dmarc
    dmarc_text = "-"
    if dmarc is not None:
        dmarc_text = (f"{dmarc.result.value}:{dmarc.header_from or '-'}"
                      f":p={dmarc.policy.value if dmarc.policy else '-'}")
    arc = analysis.arc
    arc_text = arc.result.value + (f":{arc.newest_sealer}" if arc.newest_sealer else "")
    pairs: list[tuple[str, object]] = [
        ("queue_id", envelope.queue_id or "-"),
        ("client", f"{envelope.client_name or '-'}[{envelope.client_ip or '-'}]"),
        ("helo", envelope.helo),
        ("mail_from", f"<{envelope.mail_from}>"),
        ("auth", "yes" if envelope.sasl_user else "no"),
        ("spf", analysis.spf_mailfrom.result.value),
        ("spf_helo", analysis.spf_helo.result.value if analysis.spf_helo else "-"),
        ("dkim", dkim or "none"),
        ("dmarc", dmarc_text),
        ("arc", arc_text),
        ("tls", analysis.tls.version or "none"),
        ("forged_ar_removed", forged),
        ("verdict", verdict.action.value),
        ("reason", verdict.reason.value),
    ]
    if verdict.dry_run_action is not None:
        pairs.append(("dry_run_would", verdict.dry_run_action.value))
    if verdict.override_reason is not None:
        pairs.append(("override", verdict.override_reason.value))
    if verdict.detail:
        pairs.append(("detail", verdict.detail))
    log.info("%s: %s", logfmt(envelope.queue_id or "NOQUEUE"), logfmt_pairs(pairs))
