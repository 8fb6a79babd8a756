"""``python -m bench``: one command for the whole benchmark (see bench/README.md).

Order of work: corpus → DNS server process → milters (noop, ours, the peers) → warm-up →
for each concurrency level, each milter in turn (interleaved, so slow drift hits all alike) →
optional profile → optional Postfix mode → stop everything by PID → ratios, JSON, Markdown.
Every process started here is stopped in ``finally`` (also on Ctrl-C or SIGTERM).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import tomllib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from . import REPO
from .corpus import Corpus, build_corpus
from .dns_cache import CachingForwarder, unbound_missing
from .dns_server import DnsProcess
from .driver import DriverOptions, SessionWork, plan_sessions, run_level
from .postfix_mode import PostfixConfig, run_postfix
from .procstat import MemorySampler, machine_cpu, tree_cpu_seconds
from .report import add_ratios, issue7_targets, level_result, markdown, memory_trend
from .targets import (
    Target,
    peers_missing,
    rspamd_missing,
    start_mailsec,
    start_noop,
    start_peer_chain,
    start_rspamd,
)

PEER_DNS_HOST = "127.83.0.53"  # a loopback address of our own; port 53 for resolv.conf
QUICK = {"messages": 40, "concurrency": "1,8", "per_session": 5, "warmup": 10}
FULL = {"messages": 2000, "concurrency": "1,8,32,64", "per_session": 10, "warmup": 200}


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench", description=(
        "Benchmark mailsec-milter over the milter protocol against a no-op pymilter and "
        "(--peers) OpenDKIM + OpenDMARC and rspamd, in one run; see bench/README.md."))
    p.add_argument("--quick", action="store_true",
                   help="smoke run: 40 messages per level, c=1,8 (no peers/postfix unless asked)")
    p.add_argument("--peers", action="store_true",
                   help="also measure OpenDKIM → OpenDMARC and rspamd")
    p.add_argument("--postfix", action="store_true", help="also run through a real Postfix")
    p.add_argument("--dns-latency-ms", type=float, default=0.0,
                   help="fixed latency added to every DNS query (default 0)")
    p.add_argument("--no-dns-cache", action="store_true",
                   help="milters ask the Python zone server directly, without the Unbound cache")
    p.add_argument("--cold-dns", action="store_true",
                   help="fresh domain names for every message and session: every lookup misses "
                        "every cache (use with --dns-latency-ms)")
    p.add_argument("--concurrency", help="comma-separated levels (default 1,8,32,64)")
    p.add_argument("--messages", type=int, help="messages per level (default 2000)")
    p.add_argument("--per-session", type=int, help="messages per SMTP session (default 10)")
    p.add_argument("--warmup", type=int, help="warm-up messages per milter (default 200)")
    p.add_argument("--seed", type=int, default=7, help="corpus seed (default 7)")
    p.add_argument("--out", type=Path, help="JSON report (default bench/results/run-UTC.json)")
    p.add_argument("--no-quickack", action="store_true",
                   help="driver leaves delayed ACK on (as an MTA does): shows TCP stalls")
    p.add_argument("--profile", action="store_true",
                   help="py-spy profile of mailsec-milter at c=8 (two extra passes)")
    p.add_argument("--profile-messages", type=int, default=9000,
                   help="messages in the measured profile pass (default 9000; the flame "
                        "graph pass gets a third)")
    p.add_argument("--postfix-messages", type=int, default=400,
                   help="measured messages per Postfix configuration (default 400)")
    p.add_argument("--postfix-rounds", type=int, default=4,
                   help="rounds in which the Postfix configurations take turns (default 4)")
    p.add_argument("--time-limit", type=float, default=900.0,
                   help="overall budget in seconds for the measured levels (default 900)")
    p.add_argument("--level-time-limit", type=float, default=120.0,
                   help="cap per (milter, level) in seconds (default 120)")
    p.add_argument("--milter-set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                   help="extra mailsec-milter config, e.g. milter.workers=2 (TOML value)")
    p.add_argument("--variant-set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                   help="also run a second mailsec-milter with these keys changed (e.g. "
                        "reports.record=false), measured in the same invocation; its ratios "
                        "to the first are reported as vs_mailsec")
    p.add_argument("--keep-workdir", action="store_true", help="keep the temp dir (debugging)")
    args = p.parse_args(argv)
    preset = QUICK if args.quick else FULL
    for name in ("messages", "concurrency", "per_session", "warmup"):
        if getattr(args, name) is None:
            setattr(args, name, preset[name])
    args.levels = [int(c) for c in str(args.concurrency).split(",") if c.strip()]
    if not args.levels or min(args.levels) < 1 or args.messages < 1 or args.per_session < 1:
        p.error("--concurrency, --messages and --per-session must be positive")
    return args


def parse_overrides(items: Sequence[str]) -> dict[str, dict[str, Any]]:
    """``section.key=value`` pairs; the value is read as TOML (falls back to a string)."""
    out: dict[str, dict[str, Any]] = {}
    for item in items:
        name, sep, text = item.partition("=")
        section, dot, key = name.strip().partition(".")
        if not sep or not dot or not key:
            raise SystemExit(f"--milter-set wants SECTION.KEY=VALUE, got {item!r}")
        try:
            value = tomllib.loads(f"v = {text}")["v"]
        except tomllib.TOMLDecodeError:
            value = text
        out.setdefault(section, {})[key] = value
    return out


def log(text: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {text}", file=sys.stderr, flush=True)


class Runner:
    """Owns every process of one invocation; ``cleanup()`` stops them all by PID."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.workdir = Path(tempfile.mkdtemp(prefix="mailsec-bench-"))
        self.workdir.chmod(0o755)
        self.dns: DnsProcess | None = None
        self.front: CachingForwarder | None = None
        self.nameserver = ""
        self.targets: list[Target] = []
        self.extra_targets: list[Target] = []
        self.skipped: dict[str, str] = {}
        self.options = DriverOptions(quickack=not args.no_quickack)
        stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%SZ")
        self.out: Path = args.out or REPO / "bench" / "results" / f"run-{stamp}.json"

    # -- setup ------------------------------------------------------------------------------

    def corpora(self) -> tuple[Corpus, dict[int, Corpus], Corpus]:
        """(warm-up corpus, per-level corpora, Postfix corpus)."""
        a = self.args
        if not a.cold_dns:
            main = build_corpus("main", a.seed, a.messages)
            return main, {c: main for c in a.levels}, main
        sessions = -(-a.messages // a.per_session)
        per_level = {c: build_corpus(f"c{c}", a.seed, a.messages, unique_domains=True,
                                     sessions=sessions) for c in a.levels}
        warm = build_corpus("warm", a.seed, max(1, a.warmup), unique_domains=True)
        postfix = build_corpus("main", a.seed, a.postfix_messages)
        return warm, per_level, postfix

    def start_dns(self, corpora: Sequence[Corpus]) -> str:
        """The zone server (Python, adds the latency) and, unless disabled or missing, the
        Unbound cache in front of it; returns the "IP:PORT" every milter is told to ask."""
        records: dict[tuple[str, str, str], int] = {}
        for corpus in corpora:
            for name, rdtype, value, ttl in corpus.zone:
                records.setdefault((name, rdtype, value), ttl)
        zone = self.workdir / "zone.json"
        zone.write_text(json.dumps([[n, t, v, ttl] for (n, t, v), ttl in records.items()]))
        # The chain's libc resolver can only be pointed at port 53, on an address of our own
        # (rspamd's resolver takes any port).
        host, port = (PEER_DNS_HOST, 53) if self.chain_reason() is None else ("127.0.0.1", 0)
        use_cache = not self.args.no_dns_cache
        if use_cache and unbound_missing():
            self.skipped["dns-cache"] = f"not installed: {', '.join(unbound_missing())}"
            use_cache = False
        authoritative = ("127.0.0.1", 0) if use_cache else (host, port)
        self.dns = DnsProcess(zone, host=authoritative[0], port=authoritative[1],
                              latency_ms=self.args.dns_latency_ms)
        self.dns.start()
        self.nameserver = self.dns.nameserver
        if use_cache:
            self.front = CachingForwarder((self.dns.host, self.dns.port), host=host,
                                          port=port or None, base_dir=self.workdir)
            self.front.start()
            self.nameserver = f"{self.front.host}:{self.front.port}"
        return self.nameserver

    def chain_reason(self) -> str | None:
        """Why the OpenDKIM → OpenDMARC chain cannot run (None: it can, or --peers is off)."""
        if not self.args.peers:
            return "no --peers"
        missing = peers_missing()
        if missing:
            return f"not installed: {', '.join(missing)} (scripts/install-deps.sh --bench)"
        if os.geteuid() != 0:
            return "needs root (DNS on port 53, private resolv.conf)"
        return None

    def start_targets(self, nameserver: str, probe_corpus: Corpus) -> None:
        overrides = parse_overrides(self.args.milter_set)
        self.targets.append(start_noop(self.workdir))
        self.targets.append(start_mailsec(nameserver, overrides))
        if self.args.variant_set:
            variant = {section: dict(values) for section, values in overrides.items()}
            for section, values in parse_overrides(self.args.variant_set).items():
                variant.setdefault(section, {}).update(values)
            self.targets.append(start_mailsec(nameserver, variant, key="mailsec-variant"))
        if not self.args.peers:
            return
        reason = self.chain_reason()
        if reason is not None:
            self.skipped["chain"] = reason
        else:
            host, port = self.nameserver.rsplit(":", 1)
            try:
                self.targets.append(start_peer_chain(self.workdir, host, int(port)))
            except RuntimeError as exc:
                self.skipped["chain"] = f"failed to start: {exc}"[:500]
        missing = rspamd_missing()
        if missing:
            self.skipped["rspamd"] = (f"not installed: {', '.join(missing)} "
                                      "(scripts/install-deps.sh --bench)")
            return
        log("starting rspamd (its first start compiles the TLD list: ~10 s)")
        try:
            self.targets.append(start_rspamd(self.workdir, nameserver, probe_corpus))
        except RuntimeError as exc:
            self.skipped["rspamd"] = f"failed to start: {exc}"[:1500]

    # -- measuring --------------------------------------------------------------------------

    def dns_counters(self) -> tuple[int | None, int | None, float]:
        """(queries the milters asked, queries that reached the zone server, DNS CPU s)."""
        assert self.dns is not None
        upstream = self.dns.query_count()
        pids = [self.dns.pid]
        asked = upstream
        if self.front is not None:
            counts = self.front.queries()
            asked = counts[0] if counts else None
            if self.front.pid is not None:
                pids.append(self.front.pid)
        return asked, upstream, tree_cpu_seconds(pids)

    def measure(self, target: Target, work: Sequence[SessionWork], concurrency: int,
                time_limit: float) -> dict[str, Any]:
        if self.args.cold_dns and self.front is not None and not self.front.flush():
            self.skipped["dns-cache-flush"] = "unbound-control flush failed: cold runs may " \
                                              "see answers another milter fetched"
        asked0, upstream0, dns_cpu0 = self.dns_counters()
        cpu0 = tree_cpu_seconds(target.pids)
        busy0, _ = machine_cpu()
        with MemorySampler(target.pids) as sampler:
            run = run_level(target.addresses, work, concurrency, self.options, time_limit)
        cpu1 = tree_cpu_seconds(target.pids)
        busy1, _ = machine_cpu()
        asked1, upstream1, dns_cpu1 = self.dns_counters()

        def delta(a: int | None, b: int | None) -> int | None:
            return b - a if a is not None and b is not None else None

        clk = os.sysconf("SC_CLK_TCK")
        return level_result(target.key, target.label, concurrency, run, cpu1 - cpu0,
                            sampler.peak, delta(asked0, asked1), delta(upstream0, upstream1),
                            (busy1 - busy0) / clk, dns_cpu1 - dns_cpu0)

    def execute(self) -> int:
        a = self.args
        started = dt.datetime.now(dt.UTC)
        log(f"workdir {self.workdir}")
        t0 = time.monotonic()
        warm, per_level, postfix_corpus = self.corpora()
        corpora = {id(c): c for c in (warm, *per_level.values(), postfix_corpus)}
        log(f"corpus ready in {time.monotonic() - t0:.1f}s "
            f"({sum(len(c.messages) for c in corpora.values())} messages)")
        nameserver = self.start_dns(list(corpora.values()))
        assert self.dns is not None
        log(f"DNS: milters ask {nameserver}; zone server {self.dns.nameserver} "
            f"(+{a.dns_latency_ms} ms per query){' behind Unbound' if self.front else ''}")
        self.start_targets(nameserver, postfix_corpus)  # shared domains: cold levels stay cold
        for target in self.targets:
            log(f"started {target.key}: {', '.join(target.addresses)} pids {target.pids}")
        for key, reason in self.skipped.items():
            log(f"skipped {key}: {reason}")

        warm_info: dict[str, Any] = {}
        warm_work = plan_sessions(warm.messages[: a.warmup], warm.sessions, a.per_session,
                                  0x100000)
        for target in self.targets:
            run = run_level(target.addresses, warm_work, 4, self.options, a.level_time_limit)
            warm_info[target.key] = {"messages": len(run.samples),
                                     "errors": sum(1 for s in run.samples if s.error)}
            log(f"warm-up {target.key}: {warm_info[target.key]}")

        results: list[dict[str, Any]] = []
        deadline = time.monotonic() + a.time_limit
        for level in a.levels:
            corpus = per_level[level]
            work = plan_sessions(corpus.messages, corpus.sessions, a.per_session,
                                 0x200000 + 0x10000 * a.levels.index(level))
            for target in self.targets:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    self.skipped[f"{target.key}@c={level}"] = "overall --time-limit reached"
                    continue
                result = self.measure(target, work, level, min(a.level_time_limit, remaining))
                results.append(result)
                log(f"c={level:<3} {target.key:<8} {result['msgs_per_s']:>8.1f} msgs/s  "
                    f"txn p50 {result['latency_ms']['txn']['p50']:.2f} ms  "
                    f"cpu {result['milter']['cpu_ms_per_msg']:.2f} ms/msg  "
                    f"driver {result['driver']['cpu_cores']:.2f} cores  "
                    f"errors {result['errors']}")

        profile: dict[str, Any] | None = None
        mine = next((t for t in self.targets if t.key == "mailsec"), None)
        if a.profile and mine is not None:
            corpus = per_level[a.levels[0]]

            def cycle(count: int) -> list[SessionWork]:
                repeat = max(1, -(-count // len(corpus.messages)))
                return plan_sessions((corpus.messages * repeat)[:count], corpus.sessions,
                                     a.per_session, 0x300000)

            work = cycle(a.profile_messages)
            svg_work = cycle(max(1, a.profile_messages // 3))
            log("profiling mailsec at c=8 (py-spy)")
            self.out.parent.mkdir(parents=True, exist_ok=True)
            profile = profile_target(mine, work, svg_work, self.options,
                                     self.out.with_suffix(""), a.level_time_limit)

        postfix: dict[str, Any] | None = None
        if a.postfix:
            postfix = self.run_postfix_mode(postfix_corpus)

        report = self.build_report(started, corpora, results, warm_info, profile, postfix)
        self.write(report)
        return 0

    def run_postfix_mode(self, corpus: Corpus) -> dict[str, Any]:
        a = self.args
        assert self.dns is not None
        configs = [PostfixConfig("none", "Postfix, no milter", "none", "")]
        by_key = {t.key: t for t in self.targets}
        try:
            unix = start_mailsec(self.nameserver, parse_overrides(a.milter_set),
                                 unix_socket=True, key="mailsec-unix")
            self.extra_targets.append(unix)
            nagle = start_noop(self.workdir, nodelay=False, add_header=True)
            nagle.key = "noop-nagle"
            self.extra_targets.append(nagle)
        except RuntimeError as exc:
            return {"skipped": f"could not start the extra milters: {exc}"[:500], "results": []}
        configs.append(PostfixConfig("noop-tcp", "no-op pymilter (TCP_NODELAY recipe)", "tcp",
                                     by_key["noop"].postfix_spec))
        configs.append(PostfixConfig("noop-nagle-tcp", "no-op pymilter + 1 header edit, "
                                     "without TCP_NODELAY", "tcp", nagle.postfix_spec))
        configs.append(PostfixConfig("mailsec-tcp", "mailsec-milter", "tcp",
                                     by_key["mailsec"].postfix_spec))
        configs.append(PostfixConfig("mailsec-unix", "mailsec-milter", "unix",
                                     unix.postfix_spec))
        if "chain" in by_key:
            configs.append(PostfixConfig("chain-tcp", "OpenDKIM → OpenDMARC", "tcp",
                                         by_key["chain"].postfix_spec))
        rspamd = by_key.get("rspamd")
        if rspamd is not None:
            configs.append(PostfixConfig("rspamd-tcp", "rspamd", "tcp", rspamd.postfix_spec))
            if rspamd.unix_socket:  # same processes: shows what TCP's ACK timing costs it
                configs.append(PostfixConfig("rspamd-unix", "rspamd", "unix",
                                             rspamd.unix_socket))
        messages = corpus.messages[: a.postfix_messages]
        result = run_postfix(configs, messages, corpus.sessions,
                             warmup=len(messages), per_session=a.per_session,
                             workdir=self.workdir, time_limit=max(60.0, a.time_limit / 2),
                             rounds=a.postfix_rounds, log=log)
        for r in result.get("results", []):
            log(f"postfix {r['key']:<15} p50 {r['latency_ms']['p50']:.2f} ms  "
                f"errors {r['errors']}")
        return result

    # -- output -----------------------------------------------------------------------------

    def build_report(self, started: dt.datetime, corpora: dict[int, Corpus],
                     results: list[dict[str, Any]], warm_info: dict[str, Any],
                     profile: dict[str, Any] | None,
                     postfix: dict[str, Any] | None) -> dict[str, Any]:
        a = self.args
        add_ratios(results)
        report: dict[str, Any] = {
            "schema": 1,
            "command": "python -m bench " + " ".join(sys.argv[1:]),
            "started": started.isoformat(timespec="seconds"),
            "finished": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
            "machine": {"cpus": os.cpu_count(), "kernel": platform.release(),
                        "python": platform.python_version(), "host": platform.node()},
            "code": git_state(),
            "options": {"levels": a.levels, "messages_per_level": a.messages,
                        "per_session": a.per_session, "warmup": a.warmup, "seed": a.seed,
                        "dns_latency_ms": a.dns_latency_ms, "cold_dns": a.cold_dns,
                        "quickack": not a.no_quickack, "peers": a.peers,
                        "dns_cache": not a.no_dns_cache,
                        "postfix": a.postfix, "milter_set": a.milter_set},
            "what_is_measured": {
                "driver_socket": ("TCP_NODELAY + TCP_QUICKACK (delayed ACK disabled)"
                                  if not a.no_quickack else "TCP_NODELAY, delayed ACK on"),
                "txn": "MAIL FROM .. final end-of-message reply, per message",
                "eom": "content phase: first header sent .. final end-of-message reply "
                       "(all milters of a chain)",
                "msgs_per_s": "messages completed ÷ wall time of the level (sessions of "
                              f"{a.per_session} messages; connect/HELO included)",
                "milter_cpu": "utime+stime of the milter process tree (/proc/PID/stat) "
                              "÷ messages",
                "memory": "peak of Rss/Pss summed over the tree (/proc/PID/smaps_rollup), "
                          "sampled every 0.25 s",
                "driver_cpu": "this process's CPU (all driver threads) ÷ messages; "
                              "cores ≥ 0.9 is flagged as saturated",
                "ratios": "value ÷ the same metric of the baseline at the same concurrency",
            },
            "corpus": [c.summary() for c in corpora.values()],
            "dns": {"milters_ask": self.nameserver,
                    "cache": "unbound (forwarding cache misses to the zone server)"
                             if self.front else None,
                    "zone_server": self.dns.nameserver if self.dns else None,
                    "pid": self.dns.pid if self.dns else None,
                    "cache_pid": self.front.pid if self.front else None,
                    "latency_ms": a.dns_latency_ms, "cold": a.cold_dns},
            "targets": [{"key": t.key, "label": t.label, "checks": t.checks,
                         "addresses": t.addresses, "pids": t.pids, "notes": t.notes,
                         "warmup": warm_info.get(t.key)} for t in self.targets],
            "extra_targets": [{"key": t.key, "addresses": t.addresses, "pids": t.pids}
                              for t in self.extra_targets],
            "skipped": self.skipped,
            "results": results,
            "memory_trend": memory_trend(results),
            "profile": profile,
            "postfix": postfix,
        }
        report["issue7_targets"] = issue7_targets(report)
        return report

    def write(self, report: dict[str, Any]) -> None:
        self.out.parent.mkdir(parents=True, exist_ok=True)
        self.out.write_text(json.dumps(report, indent=2) + "\n")
        text = markdown(report)
        self.out.with_suffix(".md").write_text(
            f"# Benchmark run {report['started']}\n\n`{report['command']}`\n\n{text}")
        print(text)
        log(f"wrote {self.out} and {self.out.with_suffix('.md')}")

    def cleanup(self) -> None:
        """Stop every process we started (in parallel: libmilter takes seconds to exit)."""
        stoppers = [t.stop for t in self.extra_targets + self.targets]
        if self.front is not None:
            stoppers.append(self.front.close)
        if self.dns is not None:
            stoppers.append(self.dns.stop)
        threads = [threading.Thread(target=s, daemon=True) for s in stoppers]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(40)
        for target in self.extra_targets + self.targets:
            for note in target.notes:
                if "leftover" in note:
                    log(f"{target.key}: {note}")
        self.targets.clear()
        self.extra_targets.clear()
        self.dns = None
        self.front = None
        if not self.args.keep_workdir:
            shutil.rmtree(self.workdir, ignore_errors=True)


def git_state() -> dict[str, Any]:
    """The commit measured and the files that differed from it (others edit in parallel)."""
    def git(*args: str) -> str:
        try:
            return subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True,
                                  timeout=10).stdout
        except (OSError, subprocess.SubprocessError):
            return ""

    dirty = [line[3:] for line in git("status", "--porcelain", "--", "mailsec_milter",
                                      "pyproject.toml").splitlines() if len(line) > 3]
    return {"commit": git("rev-parse", "HEAD").strip(),
            "subject": git("log", "-1", "--format=%s").strip(),
            "uncommitted_milter_files": dirty}


def profile_target(target: Target, work: Sequence[SessionWork],
                   svg_work: Sequence[SessionWork], options: DriverOptions, out_stem: Path,
                   time_limit: float) -> dict[str, Any]:
    from .profiling import profile

    return profile(target, work, svg_work, 8, options, out_stem, time_limit)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)

    def on_term(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_term)
    runner = Runner(args)
    try:
        return runner.execute()
    except KeyboardInterrupt:
        log("interrupted; stopping everything")
        return 130
    finally:
        runner.cleanup()
