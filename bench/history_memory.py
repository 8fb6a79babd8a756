"""Memory of the sending history (mailsec_milter/history.py) for N (domain, network) pairs.

    .venv/bin/python -m bench.history_memory [--pairs 100000] [--domains 100000]
        [--domain-length 40] [--limit-mb 20]

Measured with tracemalloc: the bytes the finished summary holds (what stays allocated per
worker between refreshes) and the peak during a refresh (the old summary plus the one being
built). Exits 1 when the held size is over ``--limit-mb`` (issue 15: ≤ 20 MB for 100,000
pairs). Not a test: memory, not time, and the numbers go into the report.
"""

from __future__ import annotations

import argparse
import gc
import ipaddress
import random
import sys
import tracemalloc
from collections.abc import Iterator
from datetime import date

from mailsec_milter.history import SenderHistory


def pairs(count: int, domains: int, length: int, seed: int) -> list[tuple[str, str]]:
    """``count`` distinct (domain, IPv4 /24 or IPv6 /56) pairs over ``domains`` domains."""
    rng = random.Random(seed)
    def name(i: int) -> str:
        text = (f"d{i}-" + "x" * length)[:length]
        return ".".join(text[at:at + 50] for at in range(0, len(text), 50)) + ".example"

    names = [name(i) for i in range(domains)]
    out = []
    for index in range(count):
        if index % 4 == 3:
            address = str(ipaddress.IPv6Address(0x20010DB8 << 96 | rng.getrandbits(56) << 72))
        else:
            address = str(ipaddress.IPv4Address(rng.getrandbits(24) << 8 | 7))
        out.append((names[index % domains], address))
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--pairs", type=int, default=100_000)
    parser.add_argument("--domains", type=int, default=100_000)
    parser.add_argument("--domain-length", type=int, default=40)
    parser.add_argument("--limit-mb", type=float, default=20.0)
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args(argv)
    rows = pairs(args.pairs, args.domains, args.domain_length, args.seed)

    def read(since: date) -> Iterator[tuple[str, str]]:
        yield from rows

    summary = SenderHistory(read, max_entries=max(args.pairs, 1))
    gc.collect()
    tracemalloc.start()
    summary.refresh()
    gc.collect()
    held, _ = tracemalloc.get_traced_memory()
    tracemalloc.reset_peak()
    summary.refresh()  # a second refresh: the old summary lives until the new one is built
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    sample = rows[len(rows) // 2]
    assert summary.known_network(*sample), "the summary lost a pair"
    mb = held / 1e6
    print(f"pairs={len(summary)} domains={args.domains} domain_length={args.domain_length} "
          f"held={mb:.1f} MB peak_during_refresh={peak / 1e6:.1f} MB "
          f"limit={args.limit_mb:g} MB")
    return 0 if mb <= args.limit_mb else 1


if __name__ == "__main__":
    sys.exit(main())
