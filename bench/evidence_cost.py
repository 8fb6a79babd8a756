"""CPU the RFC 9989 §8 analysis adds to one DMARC-failing message (issue 15: ≤ 2 %).

    .venv/bin/python -m bench.evidence_cost [--number 20000]

Times, in one process, the parts that run only for a message whose DMARC result is fail or
temperror: reading the marks from a 17-field header block (evidence.read_marks, with and
without a 100,000-pair sending history) and weighing them (policy.evidence_signs), and
policy.decide under dmarc_reject = "always" and "evidence" for the same analysis. Compare the
sum with the per-message CPU the main bench reports (``python -m bench``, ~0.85 ms at c=1).
A message that passes DMARC pays one comparison.
"""

from __future__ import annotations

import argparse
import sys
import timeit
from concurrent.futures import ThreadPoolExecutor
from datetime import date

from mailsec_milter.config import settings_from_mapping
from mailsec_milter.dns import StaticResolver
from mailsec_milter.engine import Engine
from mailsec_milter.evidence import read_marks
from mailsec_milter.history import SenderHistory
from mailsec_milter.model import Envelope, MessageSnapshot, parse_message
from mailsec_milter.policy import decide, evidence_signs

RECEIVED = "".join(f"Received: from h{i}.example by mx.example with ESMTP id {i}\r\n"
                   for i in range(8))
RAW = (RECEIVED + "From: Bank <news@bank.example>\r\nTo: b@example.net\r\nSubject: x\r\n"
       "Date: Mon, 7 Dec 2026 10:00:00 +0000\r\nMessage-ID: <1@bank.example>\r\n"
       "MIME-Version: 1.0\r\nContent-Type: text/plain\r\n"
       "DKIM-Signature: v=1; a=rsa-sha256; d=bank.example; s=s1; h=from; bh=AA==; b=AA==\r\n"
       "\r\nbody\r\n").encode()
ZONE = ('_dmarc.bank.example. TXT "v=DMARC1; p=reject"\n'
        'lists.example. TXT "v=spf1 ip4:192.0.2.0/24 -all"')
ENVELOPE = Envelope("192.0.2.25", helo="mail.lists.example", mail_from="b@lists.example")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    parser.add_argument("--number", type=int, default=20_000)
    args = parser.parse_args(argv)
    headers, body = parse_message(RAW)
    snapshot = MessageSnapshot(ENVELOPE, headers, body)

    def pairs(since: date) -> list[tuple[str, str]]:
        return [(f"d{i}.example", f"10.{i // 256 % 256}.{i % 256}.1") for i in range(100_000)]

    history = SenderHistory(pairs)
    history.refresh()
    always = settings_from_mapping({"milter": {"authserv_id": "mx"},
                                    "policy": {"dmarc_reject": "always"}})
    evidence = settings_from_mapping({"milter": {"authserv_id": "mx"}})
    with ThreadPoolExecutor(2) as pool:
        analysis = Engine(evidence, StaticResolver.from_zone_text(ZONE), pool,
                          history=history).analyse(snapshot)
    n = args.number

    def per_call(work: object) -> float:
        return timeit.timeit(work, number=n) / n * 1e6  # type: ignore[arg-type]

    rows = [
        ("read_marks, no history", per_call(
            lambda: read_marks(snapshot.headers, ENVELOPE.client_ip, "bank.example", None))),
        ("read_marks, 100,000-pair history", per_call(
            lambda: read_marks(snapshot.headers, ENVELOPE.client_ip, "bank.example",
                               history))),
        ("evidence_signs", per_call(lambda: evidence_signs(analysis))),
        ('decide, dmarc_reject = "always"', per_call(lambda: decide(analysis, ENVELOPE,
                                                                    always))),
        ('decide, dmarc_reject = "evidence"', per_call(lambda: decide(analysis, ENVELOPE,
                                                                      evidence))),
    ]
    for name, micros in rows:
        print(f"{name:40s} {micros:6.1f} us")
    # the two decide rows differ by evidence_signs and are noisy on a shared machine: the
    # added cost is taken as the parts themselves
    added = rows[1][1] + rows[2][1]
    print(f"{'added per failing message (marks + signs)':40s} {added:6.1f} us")
    return 0


if __name__ == "__main__":
    sys.exit(main())
