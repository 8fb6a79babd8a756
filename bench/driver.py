"""The load driver: SMTP sessions replayed over the milter protocol, as Postfix would send them.

Built on ``tests.support.milterclient`` (negotiation, NO*/NR* flags, coalesced writes,
per-event timings). Per session: negotiate, connect, HELO, then several transactions (MAIL ..
end of message, ABORT), then QUIT. Macros follow Postfix 3.7: for each stage the list the milter
asked for in negotiation, else Postfix's default ``milter_*_macros`` list, with the values a
Postfix session would have (TLS macros from HELO on for a TLS session).

Two milters are chained as Postfix's cleanup chains them: every SMTP event goes to each milter
in order; the content (headers, body, end of message) goes to the first milter, its header edits
are applied, then the edited message goes to the next one.

Driver socket (TCP): ``TCP_NODELAY`` (the client coalesces each event's packets into one write)
and, unless disabled, ``TCP_QUICKACK`` re-armed around every ``recv``: the driver acknowledges at
once, so a milter that writes its end-of-message reply in two small segments without
``TCP_NODELAY`` is not held ~40 ms by Nagle waiting for our delayed ACK. What is measured is
then processing plus loopback round trips, not TCP timer stalls.
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from tests.support import milterclient as mc

from .corpus import AUTHSERV_ID, BenchMessage, SessionSpec, expected_action

POSTFIX_DEFAULT_MACROS: Mapping[str, tuple[str, ...]] = {
    "connect": ("j", "{daemon_name}", "{daemon_addr}", "v", "_"),
    "helo": ("{tls_version}", "{cipher}", "{cipher_bits}", "{cert_subject}", "{cert_issuer}"),
    "mail": ("i", "{auth_type}", "{auth_authen}", "{auth_author}", "{mail_addr}",
             "{mail_host}", "{mail_mailer}"),
    "rcpt": ("i", "{rcpt_addr}", "{rcpt_host}", "{rcpt_mailer}"),
    "data": ("i",),
    "eoh": ("i",),
    "eom": ("i",),
}
CONTENT_EVENTS = frozenset({"header", "eoh", "body", "eom"})
TCP_QUICKACK = getattr(socket, "TCP_QUICKACK", 12)


class QuickAckSocket(socket.socket):
    """A socket that re-arms TCP_QUICKACK around every recv (Linux clears it after a while)."""

    def recv(self, bufsize: int, flags: int = 0) -> bytes:
        with contextlib.suppress(OSError):
            self.setsockopt(socket.IPPROTO_TCP, TCP_QUICKACK, 1)
        data = super().recv(bufsize, flags)
        with contextlib.suppress(OSError):
            self.setsockopt(socket.IPPROTO_TCP, TCP_QUICKACK, 1)
        return data


@dataclass(frozen=True)
class DriverOptions:
    quickack: bool = True
    nodelay: bool = True
    timeout: float = 30.0


def open_client(address: str, options: DriverOptions) -> mc.MilterClient:
    """A MilterClient on a socket set up as described in the module docstring."""
    family, host, port = mc.parse_address(address)
    if family == socket.AF_UNIX:
        return mc.MilterClient.connect(address, timeout=options.timeout)
    plain = socket.create_connection((host, port), timeout=options.timeout)
    sock: socket.socket = plain
    if options.quickack:
        sock = QuickAckSocket(plain.family, plain.type, plain.proto, fileno=plain.detach())
    if options.nodelay:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return mc.MilterClient(sock, timeout=options.timeout)


@dataclass(frozen=True)
class Sample:
    """One message as the driver saw it."""

    category: str
    expected: str
    action: str
    txn_s: float
    eom_s: float
    error: str | None = None


def _session_values(session: SessionSpec, port: int) -> dict[str, str]:
    return {
        "j": AUTHSERV_ID,
        # Postfix's default milter_macro_daemon_name is $myhostname (rspamd's authserv-id).
        "{daemon_name}": AUTHSERV_ID,
        "{daemon_addr}": "127.0.0.1",
        "v": "Postfix 3.7.11",
        "_": f"{session.client_name} [{session.client_ip}]",
        "{client_addr}": session.client_ip,
        "{client_name}": session.client_name,
        "{client_port}": str(port),
    }


_TLS_VALUES = {"{tls_version}": "TLSv1.3", "{cipher}": "TLS_AES_256_GCM_SHA384",
               "{cipher_bits}": "256"}


def stage_macros(client: mc.MilterClient, session: SessionSpec, port: int,
                 message: BenchMessage | None = None, queue_id: str = "",
                 ) -> dict[str, dict[str, str]]:
    """Per stage, the macros Postfix would send this milter (its own list, else the default)."""
    base = _session_values(session, port)
    out: dict[str, dict[str, str]] = {}
    for stage, default in POSTFIX_DEFAULT_MACROS.items():
        values = dict(base)
        if stage != "connect" and session.tls:
            values.update(_TLS_VALUES)
        if message is not None and stage not in ("connect", "helo"):
            values["i"] = queue_id
            values["{mail_addr}"] = message.mail_from
            values["{mail_host}"] = message.mail_from.rpartition("@")[2]
            values["{mail_mailer}"] = "smtp"
            values["{rcpt_addr}"] = message.rcpts[0]
            values["{rcpt_host}"] = "127.0.0.1"
            values["{rcpt_mailer}"] = "smtp"
        names = client.requested_macros.get(stage) or default
        out[stage] = {name: values[name] for name in names if name in values}
    return out


def _decisive(reply: mc.Reply | None) -> bool:
    return reply is not None and reply.command not in (mc.SMFIR_CONTINUE, mc.SMFIR_SKIP)


def _apply_edits(headers: list[tuple[bytes, bytes]], edits: Sequence[mc.HeaderEdit],
                 leading_space: bool) -> None:
    """Apply one milter's header edits the way Postfix's cleanup does."""
    for edit in edits:
        name = edit.name.encode("utf-8", "surrogateescape")
        value = edit.value
        if leading_space and value.startswith(" "):
            value = value[1:]
        data = value.encode("utf-8", "surrogateescape")
        if edit.kind == "insert":
            headers.insert(min(edit.index or 0, len(headers)), (name, data))
        elif edit.kind == "add":
            headers.append((name, data))
        else:
            positions = [i for i, (n, _) in enumerate(headers) if n.lower() == name.lower()]
            if edit.index is None or not 0 < edit.index <= len(positions):
                continue
            where = positions[edit.index - 1]
            if edit.is_delete:
                del headers[where]
            else:
                headers[where] = (name, data)


def chain_transaction(clients: Sequence[mc.MilterClient], message: BenchMessage,
                      macros: Sequence[dict[str, dict[str, str]]]) -> tuple[str, float]:
    """One transaction through several milters in Postfix's order; (action, content seconds)."""
    pairs = list(zip(clients, macros, strict=True))
    try:
        for client, m in pairs:
            reply = client.mail_from(message.mail_from, macros=m["mail"])
            if _decisive(reply):
                return reply.disposition if reply else "continue", 0.0
        accepted = 0
        for rcpt in message.rcpts:
            refused = False
            for client, m in pairs:
                reply = client.rcpt(rcpt, macros=m["rcpt"])
                if reply is not None and reply.disposition in ("reject", "tempfail"):
                    refused = True
                    break
            accepted += not refused
        if not accepted:
            return "reject", 0.0
        for client, m in pairs:
            reply = client.data(macros=m["data"])
            if _decisive(reply):
                return reply.disposition if reply else "continue", 0.0
        started = time.perf_counter()
        headers, body = mc.split_message(message.raw)
        action = "continue"
        for client, m in pairs:
            for name, value in headers:
                reply = client.header(name, b" " + value if client.leading_space else value,
                                      macros=m["eoh"])
                if reply is not None and reply.command == mc.SMFIR_SKIP:
                    break
            client.eoh(macros=m["eoh"])
            for chunk in mc.chunk_body(body):
                reply = client.body(chunk, macros=m["eom"])
                if reply is not None and reply.command == mc.SMFIR_SKIP:
                    break
            end = client.eom(macros=m["eom"])
            action = end.reply.disposition
            if client.quarantine_reason is not None and action in ("accept", "continue"):
                action = "quarantine"
            if action in ("reject", "tempfail", "discard"):
                break
            _apply_edits(headers, mc.header_edits(end.modifications), client.leading_space)
        return action, time.perf_counter() - started
    finally:
        for client, _m in pairs:
            client.abort()


@dataclass
class SessionWork:
    """One session to replay: the client side and its messages (with queue ids)."""

    session: SessionSpec
    messages: list[tuple[BenchMessage, str]]
    port: int


def run_session(addresses: Sequence[str], work: SessionWork, options: DriverOptions,
                ) -> list[Sample]:
    """Replay one session against a milter (or a chain); never raises for milter trouble."""
    samples: list[Sample] = []
    clients: list[mc.MilterClient] = []
    done = 0
    try:
        for address in addresses:
            clients.append(open_client(address, options))
        for client in clients:
            client.negotiate()
        for client in clients:
            m = stage_macros(client, work.session, work.port)
            reply = client.smtp_connect(work.session.client_name, mc.SMFIA_INET, work.port,
                                        work.session.client_ip, macros=m["connect"])
            if _decisive(reply):
                raise mc.MilterProtocolError(f"connect answered {reply}")
            reply = client.helo(work.session.helo, macros=m["helo"])
            if _decisive(reply):
                raise mc.MilterProtocolError(f"helo answered {reply}")
        for message, queue_id in work.messages:
            macros = [stage_macros(c, work.session, work.port, message, queue_id)
                      for c in clients]
            started = time.perf_counter()
            if len(clients) == 1:
                client = clients[0]
                first = len(client.events)
                result = client.send_transaction(
                    message.raw, mail_from=message.mail_from, rcpts=list(message.rcpts),
                    macros=macros[0], filter_macros=False)
                txn = time.perf_counter() - started
                eom = sum(e.seconds for e in client.events[first:] if e.event in CONTENT_EVENTS)
                del client.events[:]  # the per-event log would grow for the whole session
                action = result.action
            else:
                action, eom = chain_transaction(clients, message, macros)
                txn = time.perf_counter() - started
                for client in clients:
                    del client.events[:]
            if action == "continue":  # a final "continue" at end of message is an accept
                action = "accept"
            samples.append(Sample(message.category, expected_action(message), action, txn, eom))
            done += 1
        for client in clients:
            client.quit()
    except (mc.MilterProtocolError, OSError) as exc:
        error = f"{type(exc).__name__}: {exc}"[:200]
        for message, _qid in work.messages[done:]:
            samples.append(Sample(message.category, expected_action(message), "error", 0.0,
                                  0.0, error))
    finally:
        for client in clients:
            client.close()
    return samples


@dataclass
class LevelRun:
    """What one concurrency level produced, before statistics."""

    samples: list[Sample] = field(default_factory=list)
    wall_s: float = 0.0
    driver_cpu_s: float = 0.0
    sessions: int = 0
    timed_out: bool = False


def plan_sessions(messages: Sequence[BenchMessage], sessions: Sequence[SessionSpec],
                  per_session: int, qid_base: int) -> list[SessionWork]:
    """Cut the messages into sessions of ``per_session``, cycling through the client specs."""
    work: list[SessionWork] = []
    for number, start in enumerate(range(0, len(messages), per_session)):
        chunk = messages[start : start + per_session]
        items = [(m, f"{qid_base + start + i:X}") for i, m in enumerate(chunk)]
        work.append(SessionWork(sessions[number % len(sessions)], items,
                                40000 + number % 20000))
    return work


def run_level(addresses: Sequence[str], work: Sequence[SessionWork], concurrency: int,
              options: DriverOptions, time_limit: float) -> LevelRun:
    """Run ``work`` with ``concurrency`` threads, each replaying one session at a time."""
    lock = threading.Lock()
    queue = list(reversed(work))
    run = LevelRun()
    deadline = time.monotonic() + time_limit

    def worker() -> None:
        while True:
            with lock:
                if not queue:
                    return
                if time.monotonic() > deadline:
                    run.timed_out = True
                    return
                item = queue.pop()
            samples = run_session(addresses, item, options)
            with lock:
                run.samples.extend(samples)
                run.sessions += 1

    threads = [threading.Thread(target=worker, name=f"bench-driver-{i}", daemon=True)
               for i in range(max(1, concurrency))]
    cpu0, wall0 = time.process_time(), time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    run.wall_s = time.perf_counter() - wall0
    run.driver_cpu_s = time.process_time() - cpu0
    return run
