"""Bench: ``mailsec-milter reports send --out DIR`` on a store of 100,000 messages over 5,000
policy domains (SQLite). Reports wall time and peak RSS of the command as figures (issue 14
asks for <= 10 s on 2 cores and <= 200 MB); nothing is asserted.

    python -m bench.reports_send [--messages 100000] [--domains 5000] [--keep DIR] [--smtp]

``--smtp`` also times a real ``reports send`` (claims, deliveries, one SMTP message per report)
to a loopback SMTP sink (tests/support/smtpsink.py, in this process: it shares the CPU).

The rows are written directly with ReportStore.write (as the recorder would), each domain with
a few source IPs and a mix of pass / fail results, so a report has ~5-15 records.
"""

from __future__ import annotations

import argparse
import random
import resource
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from datetime import date
from pathlib import Path

from mailsec_milter.reports.record import PublishedPolicy, ReportRecord
from mailsec_milter.reports.store import open_store

DAY = date(2026, 12, 7)


def populate(path: Path, messages: int, domains: int, seed: int = 14) -> float:
    """Write ``messages`` records over ``domains`` policy domains; returns seconds taken."""
    rng = random.Random(seed)
    store = open_store(str(path))
    started = time.perf_counter()
    batch: list[ReportRecord] = []
    for n in range(messages):
        d = n % domains
        domain = f"d{d}.example"
        ip = f"198.51.{d % 250}.{rng.randrange(1, 8)}"
        passing = rng.random() < 0.7
        base = ReportRecord(
            day=DAY, policy_domain=domain, rua=f"mailto:dmarc@{domain}",
            published=PublishedPolicy(domain, "treewalk", "reject", "reject", "reject", "r",
                                      "r", "n"),
            source_ip=ip, header_from=domain, envelope_from=domain,
            disposition="pass" if passing else "reject",
            dmarc_dkim="pass" if passing else "fail", dmarc_spf="pass" if passing else "fail",
            dkim=((domain, "s1", "pass" if passing else "fail"),),
            spf=(domain, "mfrom", "pass" if passing else "fail"))
        batch.append(base if passing else replace(base, envelope_from="bounce.example"))
        if len(batch) >= 2000:
            store.write(batch)
            batch = []
    store.write(batch)
    store.close()
    return time.perf_counter() - started


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--messages", type=int, default=100_000)
    parser.add_argument("--domains", type=int, default=5_000)
    parser.add_argument("--keep", help="use (and keep) this directory instead of a temporary one")
    parser.add_argument("--smtp", action="store_true",
                        help="also time a real send to a loopback SMTP sink")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="mailsec-bench-reports-") as tmp:
        root = Path(args.keep or tmp)
        root.mkdir(parents=True, exist_ok=True)
        store = root / "reports.sqlite"
        store.unlink(missing_ok=True)
        fill = populate(store, args.messages, args.domains)
        rows = sum(1 for _ in open_store(str(store)).days())
        config = root / "bench.toml"
        config.write_text(f'[reports]\nstore = "{store}"\norg_name = "Bench"\n'
                          'from = "dmarc@bench.example"\n')
        out = root / "out"
        started = time.perf_counter()
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        subprocess.run([sys.executable, "-m", "mailsec_milter", "reports", "send", "--config",
                        str(config), "--period", DAY.isoformat(), "--out", str(out)],
                       check=True, stdout=subprocess.DEVNULL)
        wall = time.perf_counter() - started
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        files = list(out.iterdir())
        size = sum(f.stat().st_size for f in files)
        print(f"store: {args.messages} messages over {args.domains} policy domains "
              f"({rows} day(s)), written in {fill:.1f} s, {store.stat().st_size / 1e6:.1f} MB")
        print(f"reports send --out: {len(files)} reports ({size / 1e6:.1f} MB gzipped) in "
              f"{wall:.2f} s wall, {after.ru_utime - before.ru_utime:.2f} s user + "
              f"{after.ru_stime - before.ru_stime:.2f} s sys CPU, peak RSS "
              f"{after.ru_maxrss / 1024:.0f} MB")
        if args.smtp:
            _smtp_send(config, store)
    return 0


def _smtp_send(config: Path, store: Path) -> None:
    from tests.support.smtpsink import SmtpSink

    with SmtpSink() as sink:
        config.write_text(config.read_text() + f'submit = "{sink.address}"\n')
        started = time.perf_counter()
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        subprocess.run([sys.executable, "-m", "mailsec_milter", "reports", "send", "--config",
                        str(config), "--period", DAY.isoformat()], check=True,
                       stdout=subprocess.DEVNULL)
        wall = time.perf_counter() - started
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        print(f"reports send (SMTP to a loopback sink): {len(sink.state.messages)} mails in "
              f"{wall:.2f} s wall, {after.ru_utime - before.ru_utime:.2f} s user + "
              f"{after.ru_stime - before.ru_stime:.2f} s sys CPU, peak RSS "
              f"{after.ru_maxrss / 1024:.0f} MB")


if __name__ == "__main__":
    raise SystemExit(main())
