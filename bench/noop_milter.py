"""The protocol floor: a pymilter milter that reads every event and accepts, doing nothing else.

Same stack and socket setup as mailsec-milter, so the ratio against it is fair:
- pymilter over Debian's libmilter (worker pool), ``Milter.runmilter``;
- ``TCP_NODELAY`` on libmilter's listening socket right after it is opened (the LIBRARY-NOTES
  recipe: wrap ``milter.opensocket``, find the listener among ``/proc/self/fd``); accepted
  sockets inherit it;
- the same negotiated shape: pre-body events and headers/body ``@noreply``, DATA answered (the
  Postfix-side Nagle fix), headers and body still sent, end of message answered.

It deliberately does not import ``mailsec_milter`` (that would load dkimpy, pyspf and dnspython
and inflate the floor's memory). Run: ``python -m bench.noop_milter --socket inet:PORT@127.0.0.1``.
"""

from __future__ import annotations

import argparse
import os
import socket
import stat
import sys
from typing import Any

import Milter
import milter as libmilter


class NoopMilter(Milter.Base):  # type: ignore[misc]
    """Accepts everything; one instance per connection."""

    add_header = False  # --add-header: one header edit before the reply, as real milters do

    @Milter.noreply  # type: ignore[untyped-decorator]
    def connect(self, hostname: str, family: Any, hostaddr: Any) -> int:
        return int(Milter.CONTINUE)

    @Milter.noreply  # type: ignore[untyped-decorator]
    def hello(self, hostname: str) -> int:
        return int(Milter.CONTINUE)

    @Milter.noreply  # type: ignore[untyped-decorator]
    def envfrom(self, mail_from: str, *params: str) -> int:
        return int(Milter.CONTINUE)

    @Milter.noreply  # type: ignore[untyped-decorator]
    def envrcpt(self, rcpt: str, *params: str) -> int:
        return int(Milter.CONTINUE)

    def data(self) -> int:
        return int(Milter.CONTINUE)

    @Milter.noreply  # type: ignore[untyped-decorator]
    def header(self, name: str, value: str) -> int:
        return int(Milter.CONTINUE)

    @Milter.noreply  # type: ignore[untyped-decorator]
    def body(self, chunk: bytes) -> int:
        return int(Milter.CONTINUE)

    def eom(self) -> int:
        if self.add_header:
            self.addheader("X-Bench-Noop", "yes", 0)
        return int(Milter.ACCEPT)


def set_nodelay_on_listeners() -> int:
    """TCP_NODELAY on every listening TCP socket of this process; returns how many."""
    count = 0
    for name in os.listdir("/proc/self/fd"):
        try:
            fd = int(name)
            if not stat.S_ISSOCK(os.fstat(fd).st_mode):
                continue
            sock = socket.socket(fileno=os.dup(fd))
        except OSError:
            continue
        try:
            if (sock.family in (socket.AF_INET, socket.AF_INET6)
                    and sock.type == socket.SOCK_STREAM
                    and sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN)):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                count += 1
        except OSError:
            pass
        finally:
            sock.close()
    return count


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="no-op pymilter (benchmark floor)")
    parser.add_argument("--socket", required=True, help="libmilter socket, inet:PORT@HOST")
    parser.add_argument("--no-nodelay", action="store_true",
                        help="leave Nagle on (to show the stall the recipe removes)")
    parser.add_argument("--add-header", action="store_true",
                        help="insert one header at end of message (two writes, like real milters)")
    args = parser.parse_args(argv)
    NoopMilter.add_header = args.add_header
    original = libmilter.opensocket

    def opensocket(rmsock: bool) -> Any:
        result = original(rmsock)
        if not args.no_nodelay:
            set_nodelay_on_listeners()
        print(f"noop milter listening on {args.socket}", file=sys.stderr, flush=True)
        return result

    libmilter.opensocket = opensocket  # Milter.runmilter calls milter.opensocket(...)
    Milter.factory = NoopMilter
    Milter.runmilter("bench-noop", args.socket, 0)
    return 0


if __name__ == "__main__":
    sys.exit(main())
