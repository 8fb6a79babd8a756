"""``--postfix``: the same corpus through a real Postfix, as an MTA really talks to a milter.

A private Postfix from ``tests/e2e/harness.PostfixInstance`` (own config/queue under a temp dir,
smtpd on a loopback port, relaying to ``smtp-sink``). A smtplib client at concurrency 1 opens
sessions of several messages, claims the corpus client address and name with XCLIENT (so SPF
sees the intended IP), and times each message from MAIL FROM to the end-of-DATA reply. No
TCP tweak on Postfix's side: Nagle/delayed-ACK stalls show up as they would in production.
Configurations (``smtpd_milters`` switched with a reload): no milter (the baseline), the no-op
pymilter over TCP (with and without TCP_NODELAY), ours over TCP and over a unix socket, and the
OpenDKIM → OpenDMARC chain over TCP and rspamd over TCP and a unix socket when they run.
"""

from __future__ import annotations

import smtplib
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


def run_config(instance: PostfixInstance, config: PostfixConfig,
               messages: Sequence[BenchMessage], sessions: Sequence[SessionSpec],
               warmup: int, per_session: int, deadline: float) -> dict[str, Any]:
    """Switch ``smtpd_milters``, warm up, then send every message (c=1)."""
    instance.set_main_cf({"smtpd_milters": config.milters})
    samples: list[tuple[str, float, str | None, str]] = []
    plan = [(True, messages[:warmup]), (False, messages)]
    number = 0
    for is_warmup, batch in plan:
        for start in range(0, len(batch), per_session):
            if time.monotonic() > deadline:
                break
            chunk = batch[start : start + per_session]
            results = _send_session(instance.host, instance.smtp_port,
                                    sessions[number % len(sessions)], chunk)
            number += 1
            if not is_warmup:
                samples.extend((a, s, e, smtp_visible(expected_action(m)))
                               for (a, s, e), m in zip(results, chunk, strict=True))
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
    }


def run_postfix(configs: Sequence[PostfixConfig], messages: Sequence[BenchMessage],
                sessions: Sequence[SessionSpec], *, warmup: int, per_session: int,
                workdir: Path, time_limit: float,
                log: Callable[[str], None] = print) -> dict[str, Any]:
    """Every configuration through one private Postfix; stopped (by PID) before returning."""
    absent = missing()
    if absent:
        return {"skipped": f"not installed: {', '.join(absent)}", "results": []}
    instance = PostfixInstance(
        None, relay_domains=[RCPT_DOMAIN], base_dir=workdir,
        extra_main_cf={"milter_default_action": "tempfail"})
    results: list[dict[str, Any]] = []
    deadline = time.monotonic() + time_limit
    try:
        instance.start()
        for config in configs:
            if time.monotonic() > deadline:
                log(f"postfix: time limit reached, skipping {config.key}")
                continue
            log(f"postfix: {config.key} ({config.milters or 'no milter'})")
            per_config_deadline = min(deadline, time.monotonic() + time_limit / 2)
            results.append(run_config(instance, config, messages, sessions, warmup,
                                      per_session, per_config_deadline))
    finally:
        instance.close()
    base = next((r for r in results if r["key"] == "none"), None)
    for r in results:
        r["p50_vs_no_milter"] = ratio(r["latency_ms"]["p50"],
                                      base["latency_ms"]["p50"] if base else None)
    return {"results": results, "workdir_removed": True}
