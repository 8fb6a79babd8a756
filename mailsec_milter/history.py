"""The sending history a worker keeps in memory: which client networks delivered DMARC-passing
mail for which author domain lately (RFC 9989 §8: "observed sending patterns").

Owns: the summary (a set, never changed once published, of 64-bit keyed digests of
``(author domain, network)``, at most ``max_entries`` of them), its refresh from the report
store in a background thread of each worker, and the answer to "is this client network known
for this author domain?".
Must not: query the store on the reply path (``known_network`` only reads the in-memory set),
write to the store, create a store that does not exist, or ever block or fail a message: with
no store, a dead store or a refresh in progress the answer is simply "not known".

Why digests rather than the text: 100,000 pairs hold 8.5 MB whatever the length of the domain
names, 17.6 MB at the peak of a refresh (the old and the new set; text keys held 13 MB with
30-character names and grow with them; bench/history_memory.py measures it). The digest is
BLAKE2b keyed with a random per-process key, so nobody can aim a collision; the chance of an
accidental one is ~``entries / 2**64`` per message, and a collision could only turn a reject
into a quarantine.
"""

from __future__ import annotations

import functools
import hashlib
import ipaddress
import logging
import os
import secrets
import threading
from collections.abc import Callable, Iterable, Iterator
from collections.abc import Set as AbstractSet
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import Literal

from .addresses import normalise_domain
from .config import Settings
from .model import normalise_ip

log = logging.getLogger("mailsec_milter.history")

# Reads the (author domain, source IP) pairs that passed DMARC since a day.
PassingSources = Callable[[date], Iterable[tuple[str, str]]]
State = Literal["empty", "ready", "unavailable"]


@functools.lru_cache(maxsize=4096)  # a client's address is asked for each of its messages
def network_of(address: str, ipv4_prefix: int, ipv6_prefix: int) -> str:
    """The client's network in CIDR text (``198.51.100.0/24``); "" when it is no address."""
    try:
        text = normalise_ip(address)
        ip = ipaddress.ip_address(text)
    except ValueError:
        return ""
    prefix = ipv4_prefix if ip.version == 4 else ipv6_prefix
    return str(ipaddress.ip_network(f"{text}/{prefix}", strict=False))


@dataclass(frozen=True)
class HistoryConfig:
    """What a summary is built from; equal configs share one summary across reloads."""

    location: str
    days: int
    ipv4_prefix: int
    ipv6_prefix: int
    max_entries: int
    refresh_seconds: float

    @classmethod
    def from_settings(cls, settings: Settings) -> HistoryConfig:
        return cls(settings.reports_store, settings.history_days, settings.history_ipv4_prefix,
                   settings.history_ipv6_prefix, settings.history_max_entries,
                   settings.history_refresh)


class SenderHistory:
    """The in-memory summary; ``known_network`` is safe from any thread at any time."""

    def __init__(self, read: PassingSources | None, *, days: int = 30, ipv4_prefix: int = 24,
                 ipv6_prefix: int = 56, max_entries: int = 200_000,
                 refresh_seconds: float = 600.0,
                 today: Callable[[], date] = lambda: datetime.now(UTC).date()) -> None:
        self._read = read
        self.days = days
        self.ipv4_prefix = ipv4_prefix
        self.ipv6_prefix = ipv6_prefix
        self.max_entries = max_entries
        self.refresh_seconds = refresh_seconds
        self._today = today
        self._key = secrets.token_bytes(16)
        # Replaced as a whole by refresh() and never changed after: readers take the reference
        # once (atomic in CPython). A set, not a frozenset copy: the copy would double the
        # peak memory of a refresh.
        self._known: AbstractSet[int] = frozenset()
        self.state: State = "empty"
        self.truncated = False
        self.refreshes = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def __len__(self) -> int:
        return len(self._known)

    def _digest(self, domain: str, network: str) -> int:
        text = f"{domain} {network}".encode()
        return int.from_bytes(hashlib.blake2b(text, digest_size=8, key=self._key).digest(),
                              "big")

    def known_network(self, domain: str, client_ip: str | None) -> str:
        """The client's network if it delivered passing mail for ``domain`` within ``days``
        (as of the last refresh), else "". Never blocks, never raises."""
        known = self._known
        if not known or not domain or not client_ip:
            return ""
        network = network_of(client_ip, self.ipv4_prefix, self.ipv6_prefix)
        name = normalise_domain(domain)
        if not network or name is None:
            return ""
        return network if self._digest(name, network) in known else ""

    def refresh(self) -> bool:
        """Re-read the store once; True when the summary was replaced. On failure the last
        summary stays (it is still knowledge) and the state says so."""
        if self._read is None or self.days <= 0:
            return False
        since = self._today() - timedelta(days=self.days)
        keys: set[int] = set()
        truncated = False
        try:
            for domain, source in self._read(since):
                name = normalise_domain(domain)
                # uncached: 100,000 store rows would only push the clients out of the cache
                network = network_of.__wrapped__(source, self.ipv4_prefix, self.ipv6_prefix)
                if name is None or not network:
                    continue
                key = self._digest(name, network)
                if key in keys:
                    continue
                if len(keys) >= self.max_entries:
                    truncated = True
                    break
                keys.add(key)
        except Exception as exc:  # a dead store: this sign is unavailable, nothing else
            if self.state != "ready":
                self.state = "unavailable"
            log.warning("sending history not refreshed: %s", _short(exc))
            return False
        if truncated and not self.truncated:
            log.warning("sending history holds only %d (domain, network) pairs "
                        "([policy] history_max_entries); the rest are not known senders",
                        self.max_entries)
        self._known = keys
        self.truncated = truncated
        if self.state != "ready":
            log.info("sending history ready: %d (author domain, network) pairs from the last "
                     "%d days", len(keys), self.days)
        self.state = "ready"
        self.refreshes += 1
        return True

    def start(self) -> None:
        """Refresh now and every ``refresh_seconds`` in a daemon thread (the first refresh too:
        a slow store never delays the worker's start)."""
        if self._thread is not None or self._read is None or self.days <= 0:
            return
        self._thread = threading.Thread(target=self._run, name="sender-history", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()

    def join(self, timeout: float) -> None:
        if self._thread is not None:
            self._thread.join(timeout)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.refresh()
            except Exception:  # refresh() catches the store's errors; this is a bug
                log.exception("sending history refresh failed")
            self._stop.wait(self.refresh_seconds)


def store_reader(location: str) -> PassingSources:
    """Read passing sources from the report store at ``location`` ("" = the default path),
    opening it for each refresh. A SQLite file that does not exist yet is not created (the
    recorder creates it): it reads as no history."""
    from .reports.store import default_store_path, is_postgres_url, open_store

    where = location or default_store_path()

    def read(since: date) -> Iterator[tuple[str, str]]:
        if not is_postgres_url(where):
            try:
                os.stat(where)  # a PermissionError is a store we cannot read: it is raised
            except FileNotFoundError:
                return  # no store yet: no history
        store = open_store(where)
        try:
            yield from store.passing_sources(since)
        finally:
            store.close()

    return read


_shared_lock = threading.Lock()
_shared: tuple[HistoryConfig, SenderHistory] | None = None


def sender_history(settings: Settings) -> SenderHistory | None:
    """The worker's one history for these settings, started; None when the sign is off
    (``dmarc_reject`` other than evidence, or ``history_days = 0``).

    Called by worker.build_runtime at start and at every reload: equal settings keep the
    running summary (no re-read, no second thread); changed ones stop the old thread.
    """
    global _shared
    with _shared_lock:
        if settings.dmarc_reject != "evidence" or settings.history_days <= 0:
            if _shared is not None:  # switched off by a reload: the thread ends
                _shared[1].stop()
                _shared = None
            return None
        config = HistoryConfig.from_settings(settings)
        if _shared is not None and _shared[0] == config:
            return _shared[1]
        if _shared is not None:
            _shared[1].stop()
        history = SenderHistory(store_reader(config.location), days=config.days,
                                ipv4_prefix=config.ipv4_prefix,
                                ipv6_prefix=config.ipv6_prefix,
                                max_entries=config.max_entries,
                                refresh_seconds=config.refresh_seconds)
        history.start()
        _shared = (config, history)
        return history


def _short(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"[:200]
