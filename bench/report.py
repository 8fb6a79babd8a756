"""Statistics, ratios against the baselines of the same run, and the Markdown report.

Every level result carries ``ratios.vs_noop`` (the no-op pymilter at the same concurrency),
``ratios.vs_chain`` (OpenDKIM → OpenDMARC) and ``ratios.vs_rspamd`` (rspamd), the last two when
measured; a ratio is ``value / baseline`` and ``null`` where the baseline is missing or zero.
Lower is better for latency, CPU and memory; higher is better for msgs/s.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from typing import Any

from .driver import LevelRun
from .procstat import MemoryPeak

RATIO_FIELDS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("msgs_per_s", ("msgs_per_s",)),
    ("txn_p50", ("latency_ms", "txn", "p50")),
    ("txn_p99", ("latency_ms", "txn", "p99")),
    ("eom_p50", ("latency_ms", "eom", "p50")),
    ("cpu_ms_per_msg", ("milter", "cpu_ms_per_msg")),
    ("peak_pss_mb", ("milter", "peak_pss_mb")),
)
SATURATED = 0.9  # driver CPU (cores) from which its numbers are suspect
BASELINES = (("vs_noop", "noop"), ("vs_chain", "chain"), ("vs_rspamd", "rspamd"),
             ("vs_mailsec", "mailsec"))  # --variant-set: the variant against the default
# The ratio table: (label, ratio field, also against the no-op?)
RATIO_COLUMNS = (("msgs/s", "msgs_per_s", True), ("CPU/msg", "cpu_ms_per_msg", True),
                 ("p50 txn", "txn_p50", True), ("p50 eom", "eom_p50", False),
                 ("PSS", "peak_pss_mb", False))


def percentile(sorted_values: Sequence[float], q: float) -> float:
    """Linear interpolation between closest ranks (q in 0..100)."""
    if not sorted_values:
        return 0.0
    if len(sorted_values) == 1:
        return sorted_values[0]
    pos = (len(sorted_values) - 1) * q / 100.0
    low = math.floor(pos)
    high = min(low + 1, len(sorted_values) - 1)
    return sorted_values[low] + (sorted_values[high] - sorted_values[low]) * (pos - low)


def latency_summary(seconds: Iterable[float]) -> dict[str, float]:
    """p50/p95/p99/mean/max in milliseconds."""
    values = sorted(s * 1000.0 for s in seconds)
    if not values:
        return {"p50": 0.0, "p95": 0.0, "p99": 0.0, "mean": 0.0, "max": 0.0}
    return {
        "p50": round(percentile(values, 50), 3),
        "p95": round(percentile(values, 95), 3),
        "p99": round(percentile(values, 99), 3),
        "mean": round(sum(values) / len(values), 3),
        "max": round(values[-1], 3),
    }


def level_result(target: str, label: str, concurrency: int, run: LevelRun, milter_cpu_s: float,
                 memory: MemoryPeak, dns_queries: int | None, upstream_queries: int | None,
                 machine_busy_s: float, dns_cpu_s: float) -> dict[str, Any]:
    """One (target, concurrency) measurement as a JSON-ready dict (ratios filled in later)."""
    ok = [s for s in run.samples if s.error is None]
    errors = [s for s in run.samples if s.error is not None]
    actions: dict[str, int] = {}
    for s in run.samples:
        actions[s.action] = actions.get(s.action, 0) + 1
    mismatch_kinds: dict[str, int] = {}
    for s in ok:
        if s.action != s.expected:
            kind = f"{s.category}: {s.expected} → {s.action}"
            mismatch_kinds[kind] = mismatch_kinds.get(kind, 0) + 1
    count = max(1, len(ok))
    wall = max(run.wall_s, 1e-9)
    driver_cores = run.driver_cpu_s / wall
    return {
        "target": target,
        "label": label,
        "concurrency": concurrency,
        "messages": len(run.samples),
        "ok": len(ok),
        "errors": len(errors),
        "error_kinds": sorted({s.error or "" for s in errors})[:5],
        "tempfail": actions.get("tempfail", 0),
        "actions": dict(sorted(actions.items())),
        "verdict_mismatches": sum(mismatch_kinds.values()),
        "verdict_mismatch_kinds": dict(sorted(mismatch_kinds.items())),
        "sessions": run.sessions,
        "timed_out": run.timed_out,
        "wall_s": round(run.wall_s, 3),
        "msgs_per_s": round(len(ok) / wall, 1),
        "latency_ms": {
            "eom": latency_summary(s.eom_s for s in ok),
            "txn": latency_summary(s.txn_s for s in ok),
        },
        "milter": {
            "cpu_s": round(milter_cpu_s, 3),
            "cpu_ms_per_msg": round(milter_cpu_s * 1000.0 / count, 3),
            "cpu_cores": round(milter_cpu_s / wall, 3),
            "peak_rss_mb": round(memory.rss_mb, 1),
            "peak_pss_mb": round(memory.pss_mb, 1),
            "max_process_pss_mb": round(memory.max_process_pss_mb, 1),
            "processes": memory.processes,
            "rss_mb_start_end": [round((memory.first or (0, 0))[0], 1),
                                 round(memory.last[0], 1)],
        },
        "driver": {
            "cpu_s": round(run.driver_cpu_s, 3),
            "cpu_ms_per_msg": round(run.driver_cpu_s * 1000.0 / count, 3),
            "cpu_cores": round(driver_cores, 3),
            "saturated": driver_cores >= SATURATED,
        },
        "machine_busy_cores": round(machine_busy_s / wall, 3),
        "dns": {
            "queries": dns_queries,
            "queries_per_msg": (round(dns_queries / count, 3)
                                if dns_queries is not None else None),
            "upstream_queries": upstream_queries,
            "upstream_per_msg": (round(upstream_queries / count, 3)
                                 if upstream_queries is not None else None),
            "server_cpu_ms_per_msg": round(dns_cpu_s * 1000.0 / count, 3),
        },
        "ratios": {},
    }


def memory_trend(results: Sequence[dict[str, Any]]) -> dict[str, dict[str, float]]:
    """Per milter: RSS before its first measured level and after its last, and the messages
    it handled in between (growth over the run is what a leak would show)."""
    trend: dict[str, dict[str, float]] = {}
    for r in results:
        start, end = r["milter"]["rss_mb_start_end"]
        entry = trend.setdefault(r["target"], {"rss_mb_first": start, "rss_mb_last": end,
                                               "messages": 0})
        entry["rss_mb_last"] = end
        entry["messages"] += r["messages"]
    for entry in trend.values():
        entry["rss_mb_growth"] = round(entry["rss_mb_last"] - entry["rss_mb_first"], 1)
    return trend


def _get(result: dict[str, Any], path: tuple[str, ...]) -> float | None:
    value: Any = result
    for key in path:
        if not isinstance(value, dict) or key not in value:
            return None
        value = value[key]
    return float(value) if isinstance(value, int | float) else None


def ratio(value: float | None, base: float | None) -> float | None:
    if value is None or base is None or base <= 0:
        return None
    return round(value / base, 3)


def add_ratios(results: list[dict[str, Any]]) -> None:
    """Fill ``ratios.vs_noop``, ``vs_chain`` and ``vs_rspamd`` of every result (same
    concurrency)."""
    by_key = {(r["target"], r["concurrency"]): r for r in results}
    for result in results:
        for name, base_key in BASELINES:
            base = by_key.get((base_key, result["concurrency"]))
            result["ratios"][name] = {
                field: (ratio(_get(result, path), _get(base, path)) if base else None)
                for field, path in RATIO_FIELDS
            }


def _fmt(value: float | None, digits: int = 1) -> str:
    if value is None:
        return "-"
    if digits == 0 or abs(value) >= 1000:
        return f"{value:,.0f}"
    return f"{value:.{digits}f}"


def _ratio_text(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}x"


def markdown(report: dict[str, Any]) -> str:
    """The human report: the issue-7 table, ratios, details, Postfix mode, profile, targets."""
    results: list[dict[str, Any]] = report["results"]
    levels = sorted({r["concurrency"] for r in results})
    targets = [t["key"] for t in report["targets"]]
    by_key = {(r["target"], r["concurrency"]): r for r in results}
    lvl = " / ".join(str(c) for c in levels)
    lines = [f"## Capacity (driver: {report['what_is_measured']['driver_socket']})", ""]
    lines.append(f"| milter(s) | checks | msgs/s c={lvl} | p50 ms (txn) c={lvl} | "
                 f"CPU ms per msg c={lvl} | peak PSS MB (c={levels[-1] if levels else '-'}) |")
    lines.append("|---|---|---|---|---|---|")
    for target in report["targets"]:
        row = [by_key.get((target["key"], c)) for c in levels]
        last = row[-1] if row else None
        lines.append("| " + " | ".join([
            target["label"], target["checks"],
            " / ".join(_fmt(r["msgs_per_s"], 0) if r else "-" for r in row),
            " / ".join(_fmt(r["latency_ms"]["txn"]["p50"], 2) if r else "-" for r in row),
            " / ".join(_fmt(r["milter"]["cpu_ms_per_msg"], 2) if r else "-" for r in row),
            _fmt(last["milter"]["peak_pss_mb"]) if last else "-",
        ]) + " |")
    lines += ["", "## Ratios (same run, same concurrency; value ÷ baseline)", ""]
    # Per metric, the baselines it is shown against (noop only where it means something);
    # rspamd's columns only when it was measured, so a run without it reads as before.
    bases = ["noop", "chain"] + (["rspamd"] if any(r["target"] == "rspamd" for r in results)
                                 else []) + (
        ["mailsec"] if any(r["target"] == "mailsec-variant" for r in results) else [])
    columns = [(f"{label} ÷{base}", field, f"vs_{base}")
               for label, field, with_noop in RATIO_COLUMNS
               for base in bases if with_noop or base != "noop"]
    lines.append("| milter | c | " + " | ".join(head for head, _f, _b in columns) + " |")
    lines.append("|---|---|" + "---|" * len(columns))
    for key in targets:
        if key == "noop":
            continue
        for c in levels:
            r = by_key.get((key, c))
            if r is None:
                continue
            cells = [_ratio_text(r["ratios"].get(base, {}).get(field))
                     for _head, field, base in columns]
            lines.append(f"| {key} | {c} | " + " | ".join(cells) + " |")
    lines += ["", "## Details", ""]
    lines.append("| milter | c | msgs | msgs/s | eom p50/p95/p99 ms | txn p50/p95/p99 ms | "
                 "milter CPU ms/msg (cores) | driver CPU ms/msg (cores) | machine cores busy | "
                 "RSS / PSS MB | DNS q/msg (upstream) | errors | tempfail | verdict ≠ expected |")
    lines.append("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for key in targets:
        for c in levels:
            r = by_key.get((key, c))
            if r is None:
                continue
            e, t, m, d = (r["latency_ms"]["eom"], r["latency_ms"]["txn"], r["milter"],
                          r["driver"])
            sat = " **saturated**" if d["saturated"] else ""
            lines.append(
                f"| {key} | {c} | {r['ok']} | {_fmt(r['msgs_per_s'], 0)} | "
                f"{e['p50']:.2f} / {e['p95']:.2f} / {e['p99']:.2f} | "
                f"{t['p50']:.2f} / {t['p95']:.2f} / {t['p99']:.2f} | "
                f"{m['cpu_ms_per_msg']:.2f} ({m['cpu_cores']:.2f}) | "
                f"{d['cpu_ms_per_msg']:.2f} ({d['cpu_cores']:.2f}){sat} | "
                f"{r['machine_busy_cores']:.2f} | "
                f"{m['peak_rss_mb']:.1f} / {m['peak_pss_mb']:.1f} | "
                f"{_fmt(r['dns']['queries_per_msg'], 2)} "
                f"({_fmt(r['dns']['upstream_per_msg'], 2)}) | {r['errors']} | {r['tempfail']} | "
                f"{r['verdict_mismatches'] if key != 'noop' else '-'} |")
    wrong = [f"{r['target']} c={r['concurrency']}: " + ", ".join(
        f"{kind} ({n})" for kind, n in r.get("verdict_mismatch_kinds", {}).items())
        for r in results if r["target"] != "noop" and r.get("verdict_mismatch_kinds")]
    if wrong:
        lines += ["", "Verdicts ≠ expected (category: expected → got): " + "; ".join(wrong)]
    trend = report.get("memory_trend") or {}
    if trend:
        lines += ["", "RSS over the measured levels (first → last, messages): " + "; ".join(
            f"{k} {v['rss_mb_first']:.1f} → {v['rss_mb_last']:.1f} MB ({v['messages']:,.0f})"
            for k, v in trend.items())]
    postfix = report.get("postfix") or {}
    if postfix.get("results"):
        lines += ["", "## Through a real Postfix (c=1, smtplib client → Postfix → smtp-sink; "
                  "per message MAIL FROM → end-of-DATA reply)", ""]
        lines.append("| configuration | transport | msgs | p50 ms | p95 ms | mean ms | "
                     "p50 ÷ no milter | p50 per round ms | mismatches | errors |")
        lines.append("|---|---|---|---|---|---|---|---|---|---|")
        for r in postfix["results"]:
            lat = r["latency_ms"]
            per_round = " / ".join(f"{v:.2f}" for v in r.get("round_p50_ms", []))
            lines.append(f"| {r['label']} | {r['transport']} | {r['ok']} | {lat['p50']:.2f} | "
                         f"{lat['p95']:.2f} | {lat['mean']:.2f} | "
                         f"{_ratio_text(r.get('p50_vs_no_milter'))} | {per_round or '—'} | "
                         f"{r.get('verdict_mismatches', 0)} | {r['errors']} |")
        if postfix.get("rounds"):
            lines += ["", f"The configurations took turns in {postfix['rounds']} rounds on "
                      "slices of the corpus; a quarantine (hold queue) is expected as a 250."]
    elif postfix.get("skipped"):
        lines += ["", f"Postfix mode skipped: {postfix['skipped']}"]
    profile = report.get("profile")
    if profile and profile.get("top_self"):
        lines += ["", f"## Profile of mailsec-milter at c={profile['concurrency']} "
                  f"({profile['tool']}, {profile['samples']} samples)", ""]
        lines.append("| # | function (self) | self % | | function (inclusive) | incl % |")
        lines.append("|---|---|---|---|---|---|")
        for i, (s, inc) in enumerate(zip(profile["top_self"], profile["top_inclusive"],
                                         strict=False), 1):
            lines.append(f"| {i} | `{s['function']}` | {s['percent']:.1f} | | "
                         f"`{inc['function']}` | {inc['percent']:.1f} |")
        if profile.get("by_package"):
            lines += ["", "Self time by package: " + ", ".join(
                f"{p['package']} {p['percent']:.1f}%" for p in profile["by_package"][:10])]
    checks = report.get("issue7_targets") or []
    if checks:
        lines += ["", "## Issue 7 targets (computed from this run)", ""]
        lines.append("| target | measured | goal | met |")
        lines.append("|---|---|---|---|")
        for c in checks:
            met = {True: "yes", False: "no", None: "n/a"}[c["met"]]
            lines.append(f"| {c['target']} | {c['measured']} | {c['goal']} | {met} |")
    if report.get("skipped"):
        lines += ["", "Skipped: " + "; ".join(f"{k}: {v}" for k, v in report["skipped"].items())]
    return "\n".join(lines) + "\n"


def issue7_targets(report: dict[str, Any]) -> list[dict[str, Any]]:
    """The issue's targets, evaluated where this run measured what they need."""
    by_key = {(r["target"], r["concurrency"]): r for r in report["results"]}
    out: list[dict[str, Any]] = []

    def add(target: str, value: float | None, goal: str, ok: bool | None, unit: str = "x") -> None:
        measured = "-" if value is None else f"{value:.2f}{unit}"
        out.append({"target": target, "measured": measured, "value": value, "goal": goal,
                    "met": ok if value is not None else None})

    mine8 = by_key.get(("mailsec", 8))
    cpu = mine8["ratios"]["vs_chain"]["cpu_ms_per_msg"] if mine8 else None
    add("CPU per message at c=8 vs the chain", cpu, "≤ 1.0x", cpu is not None and cpu <= 1.0)
    for c in (8, 32):
        r = by_key.get(("mailsec", c))
        thr = r["ratios"]["vs_chain"]["msgs_per_s"] if r else None
        add(f"throughput at c={c} vs the chain", thr, "≥ 1.0x", thr is not None and thr >= 1.0)
    postfix = {r["key"]: r for r in (report.get("postfix") or {}).get("results", [])}
    for key, name in (("mailsec-tcp", "TCP"), ("mailsec-unix", "unix socket")):
        r = postfix.get(key)
        p50 = r["latency_ms"]["p50"] if r else None
        add(f"through Postfix over {name} at c=1, p50", p50, "≤ 4 ms",
            p50 is not None and p50 <= 4.0, " ms")
    # The same goal with the machine's speed taken out: the issue's 4 ms was set where Postfix
    # alone took 1.8 ms, and Postfix alone moves between ~1.3 and ~2.4 ms from day to day here.
    r = postfix.get("mailsec-tcp")
    rel = r.get("p50_vs_no_milter") if r else None
    add("through Postfix over TCP at c=1, p50 vs Postfix without a milter", rel,
        f"≤ {4.0 / 1.8:.2f}x (4 ms ÷ 1.8 ms)", rel is not None and rel <= 4.0 / 1.8)
    dns = report["options"]
    if dns.get("dns_latency_ms", 0) > 0 and dns.get("cold_dns"):
        r = by_key.get(("mailsec", 1))
        eom = r["ratios"]["vs_chain"]["eom_p50"] if r else None
        add("cold cache, DNS +latency: p50 end-of-message at c=1 vs the chain", eom,
            "≤ 0.5x", eom is not None and eom <= 0.5)
    # The moonshot: rspamd (C + Lua) doing the same checks.
    cpu = mine8["ratios"].get("vs_rspamd", {}).get("cpu_ms_per_msg") if mine8 else None
    add("moonshot: CPU per message at c=8 vs rspamd", cpu, "≤ 1.0x",
        cpu is not None and cpu <= 1.0)
    for c in (8, 32):
        r = by_key.get(("mailsec", c))
        thr = r["ratios"].get("vs_rspamd", {}).get("msgs_per_s") if r else None
        add(f"moonshot: throughput at c={c} vs rspamd", thr, "≥ 1.0x",
            thr is not None and thr >= 1.0)
    r64 = by_key.get(("mailsec", 64))
    pss = r64["milter"]["max_process_pss_mb"] if r64 else None
    add("peak PSS per worker at c=64", pss, "≤ 60 MB", pss is not None and pss <= 60, " MB")
    return out
