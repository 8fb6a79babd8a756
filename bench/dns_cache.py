"""A caching resolver in front of the benchmark's authoritative DNS server, as on a mail host.

Every milter (ours, OpenDKIM's libunbound, OpenDMARC's libc resolver) asks this Unbound; it
forwards cache misses to the Python server that holds the zone and adds the per-query latency.
Without it, OpenDMARC (which caches nothing) would send ~3 queries per message to a Python DNS
server and be slowed by that server rather than by its own work. Cold-cache runs
(``--cold-dns``) use fresh names, so every lookup still pays the latency once.

Built on ``tests/e2e/harness.DnsServer`` (process handling, readiness probe, stop by process
group); only the configuration differs: a forward zone instead of local data, and a control
socket for the query counters.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

from tests.e2e.harness import DnsServer, free_port, unbound_server_options

UNBOUND_CONTROL = "unbound-control"


def unbound_missing() -> list[str]:
    path = "/usr/sbin:/usr/bin:/sbin:/bin"
    return [b for b in ("unbound", "unbound-checkconf", UNBOUND_CONTROL)
            if shutil.which(b) is None and shutil.which(b, path=path) is None]


class CachingForwarder(DnsServer):
    """Unbound on ``host:port`` forwarding everything to ``upstream`` (host, port)."""

    def __init__(self, upstream: tuple[str, int], *, host: str = "127.0.0.1",
                 port: int | None = None, base_dir: Path | None = None) -> None:
        self.bind_host = host
        self.upstream = upstream
        super().__init__((), port=port if port is not None else free_port(udp=True),
                         base_dir=base_dir)
        self.host = host

    @property
    def control_socket(self) -> Path:
        return self.workdir / "unbound.ctl"

    def render_config(self) -> str:
        up_host, up_port = self.upstream
        return "\n".join([
            *unbound_server_options(self.bind_host, self.port, self.workdir),
            "    do-not-query-localhost: no",
            '    module-config: "iterator"',
            "    qname-minimisation: no",
            "    prefetch: no",
            "    msg-cache-size: 32m",
            "    rrset-cache-size: 64m",
            "    statistics-cumulative: yes",
            '    domain-insecure: "."',
            "forward-zone:",
            '    name: "."',
            f"    forward-addr: {up_host}@{up_port}",
            "remote-control:",
            "    control-enable: yes",
            f'    control-interface: "{self.control_socket}"',
            "    control-use-cert: no",
            "",
        ])

    def _control(self, *command: str) -> str:
        return subprocess.run(
            [shutil.which(UNBOUND_CONTROL, path="/usr/sbin:/usr/bin") or UNBOUND_CONTROL,
             "-c", str(self.conf_path), *command],
            capture_output=True, text=True, timeout=10, check=True).stdout

    def flush(self) -> bool:
        """Empty the cache (so the next milter measured cold finds nothing another warmed)."""
        try:
            self._control("flush_zone", ".")
            self._control("flush_negative")
        except (OSError, subprocess.SubprocessError):
            return False
        return True

    def queries(self) -> tuple[int, int] | None:
        """(client queries, cache misses) answered since start, or None if unavailable."""
        try:
            out = self._control("stats_noreset")
        except (OSError, subprocess.SubprocessError):
            return None
        stats = dict(line.split("=", 1) for line in out.splitlines() if "=" in line)
        try:
            return int(stats["total.num.queries"]), int(stats["total.num.cachemiss"])
        except (KeyError, ValueError):
            return None
