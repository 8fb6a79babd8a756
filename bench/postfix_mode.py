"""``--postfix``: the same corpus through a real Postfix, as an MTA really talks to a milter.

A private Postfix from ``tests/e2e/harness.PostfixInstance`` (own config/queue under a temp dir,
smtpd on a loopback port, relaying to ``smtp-sink``). A smtplib client at concurrency 1 opens
sessions of several messages, claims the corpus client address and name with XCLIENT (so SPF
sees the intended IP), and times each message from MAIL FROM to the end-of-DATA reply. No
TCP tweak on Postfix's side: Nagle/delayed-ACK stalls show up as they would in production.
Configurations (``smtpd_milters`` switched with a reload): no milter (the baseline), the no-op
pymilter over TCP (with and without TCP_NODELAY), ours over TCP and over a unix socket, and the
OpenDKIM → OpenDMARC chain over TCP and rspamd over TCP and a unix socket when they run. They
take turns in rounds on slices of the corpus (see ``run_postfix``), so drift hits all alike.
"""

from __future__ import annotations

import smtplib
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests.e2e.harness import PostfixInstance, missing_binaries

from .corpus import RCPT_DOMAIN, BenchMessage, SessionSpec, expected_action
from .report import latency_summary, ratio

POSTFIX_BINARIES = ("postfix", "postconf", "postqueue", "smtp-sink")


@dataclass(frozen=True)
class PostfixConfig:
    key: str
    label: str
    transport: str
    milters: str  # smtpd_milters ("" for none)


def missing() -> list[str]:
    return missing_binaries(POSTFIX_BINARIES)


def smtp_visible(action: str) -> str:
    """What the SMTP client sees for a verdict: a quarantine (Postfix's hold queue) is a 250."""
    return "accept" if action == "quarantine" else action


def _send_session(host: str, port: int, session: SessionSpec,
                  messages: Sequence[BenchMessage]) -> list[tuple[str, float, str | None]]:
    """One SMTP session; (action, seconds, error) per message."""
    out: list[tuple[str, float, str | None]] = []
    done = 0
    try:
        with smtplib.SMTP(host, port, timeout=60) as smtp:
            smtp.ehlo(session.helo)
            code, text = smtp.docmd(
                "XCLIENT", f"ADDR={session.client_ip} NAME={session.client_name}")
            if code != 220:
                raise smtplib.SMTPException(f"XCLIENT refused: {code} {text!r}")
            smtp.ehlo(session.helo)
            for message in messages:
                started = time.perf_counter()
                code, text = smtp.mail(message.mail_from)
                if code != 250:
                    raise smtplib.SMTPException(f"MAIL: {code} {text!r}")
                for rcpt in message.rcpts:
                    smtp.rcpt(rcpt)
                try:
                    # smtplib raises only when DATA itself is refused; the end-of-data reply
                    # (where a milter's verdict shows) comes back as a code
                    code, text = smtp.data(message.raw)
                except smtplib.SMTPDataError as exc:
                    code = exc.smtp_code
                action = ("accept" if 200 <= code < 300 else
                          "tempfail" if 400 <= code < 500 else "reject")
                out.append((action, time.perf_counter() - started, None))
                done += 1
    except (smtplib.SMTPException, OSError) as exc:
        error = f"{type(exc).__name__}: {exc}"[:200]
        out.extend(("error", 0.0, error) for _ in messages[done:])
    return out


def _send_batch(instance: PostfixInstance, messages: Sequence[BenchMessage],
                sessions: Sequence[SessionSpec], per_session: int, first_session: int,
                deadline: float) -> list[tuple[str, float, str | None, str]]:
    """Send ``messages`` in sessions of ``per_session``; (action, s, error, expected) each."""
    samples: list[tuple[str, float, str | None, str]] = []
    for number, start in enumerate(range(0, len(messages), per_session)):
        if time.monotonic() > deadline:
            break
        chunk = messages[start : start + per_session]
        results = _send_session(instance.host, instance.smtp_port,
                                sessions[(first_session + number) % len(sessions)], chunk)
        samples.extend((a, s, e, smtp_visible(expected_action(m)))
                       for (a, s, e), m in zip(results, chunk, strict=True))
    return samples


def summarise(config: PostfixConfig, samples: Sequence[tuple[str, float, str | None, str]],
              round_p50s: Sequence[float]) -> dict[str, Any]:
    ok = [s for s in samples if s[2] is None]
    actions: dict[str, int] = {}
    for action, *_rest in samples:
        actions[action] = actions.get(action, 0) + 1
    return {
        "key": config.key,
        "label": config.label,
        "transport": config.transport,
        "smtpd_milters": config.milters,
        "messages": len(samples),
        "ok": len(ok),
        "errors": len(samples) - len(ok),
        "error_kinds": sorted({s[2] or "" for s in samples if s[2]})[:5],
        "actions": dict(sorted(actions.items())),
        "verdict_mismatches": sum(1 for a, _s, _e, want in ok if a != want),
        "latency_ms": latency_summary(s for _a, s, _e, _w in ok),
        "round_p50_ms": [round(p, 3) for p in round_p50s],
    }


def run_postfix(configs: Sequence[PostfixConfig], messages: Sequence[BenchMessage],
                sessions: Sequence[SessionSpec], *, warmup: int, per_session: int,
                workdir: Path, time_limit: float, rounds: int = 4,
                log: Callable[[str], None] = print) -> dict[str, Any]:
    """Every configuration through one private Postfix; stopped (by PID) before returning.

    The messages are cut into ``rounds`` slices and the configurations take turns on each
    slice (none, noop, ours, ..., then the next slice), so a slow drift of the machine (a
    noisy neighbour, frequency scaling) hits every configuration alike instead of whichever
    ran last. After each switch of ``smtpd_milters`` (a reload: new smtpd processes) one
    unmeasured session warms the path; before the first round every configuration gets
    ``warmup`` unmeasured messages (the CLI passes all of them: milters started just for this
    mode, like ours on a unix socket, would otherwise be measured with cold DNS caches).
    """
    absent = missing()
    if absent:
        return {"skipped": f"not installed: {', '.join(absent)}", "results": []}
    instance = PostfixInstance(
        None, relay_domains=[RCPT_DOMAIN], base_dir=workdir,
        extra_main_cf={"milter_default_action": "tempfail"})
    rounds = max(1, min(rounds, len(messages)))
    size = -(-len(messages) // rounds)
    slices = [messages[i : i + size] for i in range(0, len(messages), size)]
    samples: dict[str, list[tuple[str, float, str | None, str]]] = {c.key: [] for c in configs}
    round_p50s: dict[str, list[float]] = {c.key: [] for c in configs}
    deadline = time.monotonic() + time_limit
    try:
        instance.start()
        for config in configs:
            log(f"postfix: warm-up {config.key} ({config.milters or 'no milter'})")
            instance.set_main_cf({"smtpd_milters": config.milters})
            _send_batch(instance, messages[:warmup], sessions, per_session, 0, deadline)
        for number, batch in enumerate(slices):
            if time.monotonic() > deadline:
                log(f"postfix: time limit reached after {number} of {len(slices)} rounds")
                break
            for config in configs:
                instance.set_main_cf({"smtpd_milters": config.milters})
                _send_batch(instance, batch[:per_session], sessions, per_session, 0, deadline)
                got = _send_batch(instance, batch, sessions, per_session, number * 7, deadline)
                samples[config.key].extend(got)
                ok = [seconds for _a, seconds, error, _w in got if error is None]
                if ok:
                    round_p50s[config.key].append(1000.0 * statistics.median(ok))
            log(f"postfix: round {number + 1}/{len(slices)}: " + ", ".join(
                f"{key} {values[-1]:.2f} ms" for key, values in round_p50s.items() if values))
    finally:
        instance.close()
    results = [summarise(c, samples[c.key], round_p50s[c.key]) for c in configs]
    base = next((r for r in results if r["key"] == "none"), None)
    for r in results:
        r["p50_vs_no_milter"] = ratio(r["latency_ms"]["p50"],
                                      base["latency_ms"]["p50"] if base else None)
    return {"results": results, "rounds": len(slices), "workdir_removed": True}
