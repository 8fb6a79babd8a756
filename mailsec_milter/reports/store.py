"""The report store: DMARC aggregate-report rows per UTC day, in SQLite or PostgreSQL.

Owns: the versioned schema (applied at open), writing batches of records aggregated per RFC 9990
record tuple and day (an upsert that adds counts, so several workers and several MX hosts can
write into one store), the queries report sending, sending history and the audit read, the
claim that makes exactly one host send a report, and retention.
Must not: run on the reply path (the recorder's writer thread and the CLI use it), or leak a
password from a PostgreSQL URL into a message.

SQLite (the standard library, WAL mode) serves one host; ``postgresql://`` URLs (psycopg 3)
serve a fleet. Both run the same SQL, written with ``?`` placeholders.
"""

from __future__ import annotations

import collections
import contextlib
import json
import os
import re
import sqlite3
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import urlsplit, urlunsplit

from .record import PublishedPolicy, ReportRecord

DEFAULT_STORE_NAME = "reports.sqlite"
DEFAULT_STATE_DIRECTORY = "/var/lib/mailsec-milter"


class StoreError(Exception):
    """The store cannot be opened or written; the message names the store and the problem."""


# Each entry is one schema version; a store records the highest it has applied. Append only.
MIGRATIONS: tuple[tuple[str, ...], ...] = (
    (
        """CREATE TABLE report_rows (
            day TEXT NOT NULL,
            tuple_key TEXT NOT NULL,
            policy_domain TEXT NOT NULL,
            header_from TEXT NOT NULL,
            source_ip TEXT NOT NULL,
            envelope_from TEXT NOT NULL,
            disposition TEXT NOT NULL,
            dmarc_dkim TEXT NOT NULL,
            dmarc_spf TEXT NOT NULL,
            rua TEXT NOT NULL,
            published TEXT NOT NULL,
            reasons TEXT NOT NULL,
            dkim TEXT NOT NULL,
            spf TEXT NOT NULL,
            messages BIGINT NOT NULL,
            PRIMARY KEY (day, tuple_key))""",
        "CREATE INDEX report_rows_domain_day ON report_rows (policy_domain, day)",
        "CREATE INDEX report_rows_from_day ON report_rows (header_from, day)",
        """CREATE TABLE report_claims (
            policy_domain TEXT NOT NULL,
            period_begin TEXT NOT NULL,
            period_end TEXT NOT NULL,
            report_id TEXT NOT NULL,
            claimed_by TEXT NOT NULL,
            claimed_at TEXT NOT NULL,
            state TEXT NOT NULL,
            attempts INTEGER NOT NULL,
            detail TEXT NOT NULL,
            PRIMARY KEY (policy_domain, period_begin))""",
    ),
    (  # 2: what each destination of a report got (no report twice to one address; daily caps)
        """CREATE TABLE report_deliveries (
            policy_domain TEXT NOT NULL,
            period_begin TEXT NOT NULL,
            destination TEXT NOT NULL,
            state TEXT NOT NULL,
            day TEXT NOT NULL,
            detail TEXT NOT NULL,
            PRIMARY KEY (policy_domain, period_begin, destination))""",
        "CREATE INDEX report_deliveries_destination_day ON report_deliveries (destination, day)",
    ),
)

_UPSERT = """INSERT INTO report_rows (day, tuple_key, policy_domain, header_from, source_ip,
    envelope_from, disposition, dmarc_dkim, dmarc_spf, rua, published, reasons, dkim, spf,
    messages) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
    ON CONFLICT (day, tuple_key)
    DO UPDATE SET messages = report_rows.messages + excluded.messages"""


@dataclass(frozen=True)
class StoredRow:
    """One aggregated record tuple of one day, as read back."""

    day: date
    policy_domain: str
    header_from: str
    source_ip: str
    envelope_from: str
    disposition: str
    dmarc_dkim: str
    dmarc_spf: str
    rua: str
    published: PublishedPolicy
    reasons: tuple[tuple[str, str], ...]
    dkim: tuple[tuple[str, str, str], ...]
    spf: tuple[str, str, str] | None
    messages: int


@dataclass(frozen=True)
class Claim:
    """A report period claimed by one host (``state``: claimed / sent / skipped / deferred —
    to be tried again by a later run — / failed)."""

    policy_domain: str
    period_begin: date
    period_end: date
    report_id: str
    claimed_by: str
    state: str
    attempts: int
    detail: str


class _Connection(Protocol):
    def cursor(self) -> Any: ...
    def commit(self) -> None: ...
    def rollback(self) -> None: ...
    def close(self) -> None: ...


def redact(url: str) -> str:
    """A store location safe for messages and logs: a URL's password replaced by ``***``."""
    if "://" not in url:
        return url
    try:
        parts = urlsplit(url)
    except ValueError:
        return "<unparsable store URL>"
    if parts.password is None:
        return url
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@", 1)
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))


def default_store_path() -> str:
    """``$STATE_DIRECTORY/reports.sqlite`` (systemd's StateDirectory=), else under /var/lib."""
    state = os.environ.get("STATE_DIRECTORY", "").split(":")[0] or DEFAULT_STATE_DIRECTORY
    return str(Path(state) / DEFAULT_STORE_NAME)


def is_postgres_url(location: str) -> bool:
    return location.startswith(("postgresql://", "postgres://"))


class ReportStore:
    """One connection to the store; a lock makes it safe to share between threads."""

    def __init__(self, location: str) -> None:
        self.location = location
        self.postgres = is_postgres_url(location)
        self._lock = threading.Lock()
        self._conn = self._connect()
        try:
            self._migrate()
        except StoreError:
            self.close()
            raise

    # --- opening ---------------------------------------------------------------------------

    def _connect(self) -> _Connection:
        where = redact(self.location)
        if self.postgres:
            try:
                import psycopg
            except ImportError:
                raise StoreError(f"{where}: PostgreSQL needs psycopg 3 "
                                 "(pip install 'mailsec-milter[postgres]')") from None
            try:
                conn: _Connection = psycopg.connect(self.location, connect_timeout=5)
            except psycopg.Error as exc:
                raise StoreError(f"{where}: {_first_line(exc)}") from None
            return conn
        path = Path(self.location)
        if not path.parent.is_dir():
            raise StoreError(f"{where}: directory {path.parent} does not exist (create it, "
                             "owned by the milter's user, or set [reports] store)")
        try:
            lite = sqlite3.connect(str(path), timeout=5.0, check_same_thread=False)
            lite.execute("PRAGMA journal_mode=WAL")
            lite.execute("PRAGMA synchronous=NORMAL")
        except sqlite3.DatabaseError as exc:
            raise StoreError(f"{where}: {exc} (not an SQLite database?)") from None
        return lite

    def _migrate(self) -> None:
        """Apply the schema versions this store has not seen yet, each in one transaction."""
        with self._lock:
            try:
                cur = self._conn.cursor()
                cur.execute("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)")
                self._conn.commit()
                if self.postgres:  # one host migrates at a time
                    cur.execute("LOCK TABLE schema_version IN EXCLUSIVE MODE")
                cur.execute("SELECT MAX(version) FROM schema_version")
                row = cur.fetchone()
                current = int(row[0]) if row and row[0] is not None else 0
                if current > len(MIGRATIONS):
                    raise StoreError(f"{redact(self.location)}: schema version {current} is "
                                     f"newer than this program's {len(MIGRATIONS)}")
                for version in range(current + 1, len(MIGRATIONS) + 1):
                    for statement in MIGRATIONS[version - 1]:
                        cur.execute(statement)
                    cur.execute(self._sql("INSERT INTO schema_version (version) VALUES (?)"),
                                (version,))
                self._conn.commit()
            except StoreError:
                self._conn.rollback()
                raise
            except Exception as exc:
                self._rollback_quietly()
                raise StoreError(f"{redact(self.location)}: {_first_line(exc)}") from None

    @property
    def schema_version(self) -> int:
        rows = self._query("SELECT MAX(version) FROM schema_version", ())
        return int(rows[0][0] or 0)

    # --- writing ---------------------------------------------------------------------------

    def write(self, records: Sequence[ReportRecord]) -> int:
        """Add a batch: equal tuples of a day are summed in one row (records are hashable, so
        the canonical key is computed once per distinct tuple). Returns rows touched."""
        counts = collections.Counter(records)
        params = [_row_params(record.day.isoformat(), record.tuple_key(), record, count)
                  for record, count in counts.items()]
        self._execute_many(_UPSERT, params)
        return len(params)

    def purge(self, keep_days: int, today: date | None = None) -> int:
        """Drop rows (and claims) older than ``keep_days`` days; returns the rows removed."""
        cutoff = ((today or datetime.now(UTC).date()) - timedelta(days=keep_days)).isoformat()
        removed = self._execute("DELETE FROM report_rows WHERE day < ?", (cutoff,))
        self._execute("DELETE FROM report_claims WHERE period_end < ?", (cutoff,))
        self._execute("DELETE FROM report_deliveries WHERE period_begin < ?", (cutoff,))
        return removed

    # --- reading ---------------------------------------------------------------------------

    def rows(self, policy_domain: str, begin: date, end: date) -> list[StoredRow]:
        """Every stored row of ``policy_domain`` for the days begin <= day <= end."""
        found = self._query(
            "SELECT day, policy_domain, header_from, source_ip, envelope_from, disposition, "
            "dmarc_dkim, dmarc_spf, rua, published, reasons, dkim, spf, messages "
            "FROM report_rows WHERE policy_domain = ? AND day >= ? AND day <= ? "
            "ORDER BY day, header_from, source_ip, tuple_key",
            (policy_domain, begin.isoformat(), end.isoformat()))
        return [_stored(row) for row in found]

    def policy_domains(self, begin: date, end: date) -> list[tuple[str, int]]:
        """(policy domain, messages) with rows in the period, most messages first."""
        found = self._query(
            "SELECT policy_domain, SUM(messages) FROM report_rows WHERE day >= ? AND day <= ? "
            "GROUP BY policy_domain ORDER BY SUM(messages) DESC, policy_domain",
            (begin.isoformat(), end.isoformat()))
        return [(str(d), int(n)) for d, n in found]

    def days(self) -> list[tuple[date, int, int]]:
        """(day, policy domains, messages) for every day with rows, oldest first."""
        found = self._query(
            "SELECT day, COUNT(DISTINCT policy_domain), SUM(messages) FROM report_rows "
            "GROUP BY day ORDER BY day", ())
        return [(date.fromisoformat(str(d)), int(n), int(m)) for d, n, m in found]

    def passing_sources(self, since: date) -> Iterator[tuple[str, str]]:
        """(author domain, source IP) pairs that delivered DMARC-passing mail since ``since``
        (the sending-pattern knowledge the policy's history sign reads)."""
        found = self._query(
            "SELECT DISTINCT header_from, source_ip FROM report_rows WHERE day >= ? AND "
            "(dmarc_dkim = 'pass' OR dmarc_spf = 'pass')", (since.isoformat(),))
        for author, source in found:
            yield str(author), str(source)

    def top_policy_domains(self, begin: date, end: date, limit: int
                           ) -> list[tuple[str, int, str]]:
        """(policy domain, messages, published p) of the domains that sent the most mail in
        the period; p is the most recently seen published policy."""
        ranked = self.policy_domains(begin, end)[:limit]
        out = []
        for domain, messages in ranked:
            latest = self._query(
                "SELECT published FROM report_rows WHERE policy_domain = ? AND day >= ? AND "
                "day <= ? ORDER BY day DESC LIMIT 1",
                (domain, begin.isoformat(), end.isoformat()))
            p = json.loads(str(latest[0][0])).get("p", "") if latest else ""
            out.append((domain, messages, p))
        return out

    def total_messages(self, begin: date, end: date) -> int:
        found = self._query("SELECT SUM(messages) FROM report_rows WHERE day >= ? AND day <= ?",
                            (begin.isoformat(), end.isoformat()))
        return int(found[0][0] or 0)

    # --- claims: exactly one host sends each report ------------------------------------------

    def claim(self, policy_domain: str, begin: date, end: date, report_id: str,
              host: str) -> bool:
        """Claim the report of ``policy_domain`` for the period; False if another host (or an
        earlier run) already did. One INSERT in one transaction: the primary key decides."""
        inserted = self._execute(
            "INSERT INTO report_claims (policy_domain, period_begin, period_end, report_id, "
            "claimed_by, claimed_at, state, attempts, detail) VALUES (?, ?, ?, ?, ?, ?, "
            "'claimed', 0, '') ON CONFLICT (policy_domain, period_begin) DO NOTHING",
            (policy_domain, begin.isoformat(), end.isoformat(), report_id, host,
             datetime.now(UTC).isoformat(timespec="seconds")))
        return inserted == 1

    def set_claim_state(self, policy_domain: str, begin: date, state: str, detail: str = "",
                        attempted: bool = False) -> None:
        self._execute(
            "UPDATE report_claims SET state = ?, detail = ?, attempts = attempts + ? "
            "WHERE policy_domain = ? AND period_begin = ?",
            (state, detail[:500], 1 if attempted else 0, policy_domain, begin.isoformat()))

    def claims(self, begin: date | None = None) -> list[Claim]:
        found = self._query(
            "SELECT policy_domain, period_begin, period_end, report_id, claimed_by, state, "
            "attempts, detail FROM report_claims WHERE period_begin >= ? "
            "ORDER BY period_begin, policy_domain", ((begin or date.min).isoformat(),))
        return [_claim(r) for r in found]

    def reclaim(self, policy_domain: str, begin: date, host: str, max_attempts: int) -> bool:
        """Take over a ``deferred`` claim for another attempt; False if another host (or an
        earlier run) did, or its attempts are used up. One UPDATE: the row lock decides."""
        taken = self._execute(
            "UPDATE report_claims SET state = 'claimed', claimed_by = ?, claimed_at = ? "
            "WHERE policy_domain = ? AND period_begin = ? AND state = 'deferred' "
            "AND attempts < ?",
            (host, datetime.now(UTC).isoformat(timespec="seconds"), policy_domain,
             begin.isoformat(), max_attempts))
        return taken == 1

    def claim_of(self, policy_domain: str, begin: date) -> Claim | None:
        found = self._query(
            "SELECT policy_domain, period_begin, period_end, report_id, claimed_by, state, "
            "attempts, detail FROM report_claims WHERE policy_domain = ? AND period_begin = ?",
            (policy_domain, begin.isoformat()))
        return _claim(found[0]) if found else None

    # --- deliveries: one row per report and destination ------------------------------------

    def record_delivery(self, policy_domain: str, begin: date, destination: str, state: str,
                        day: date, detail: str = "") -> None:
        """Remember what ``destination`` got for this report (``sent``, ``failed``, ...)."""
        self._execute(
            "INSERT INTO report_deliveries (policy_domain, period_begin, destination, state, "
            "day, detail) VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (policy_domain, period_begin, "
            "destination) DO UPDATE SET state = excluded.state, day = excluded.day, "
            "detail = excluded.detail",
            (policy_domain, begin.isoformat(), destination, state, day.isoformat(),
             detail[:500]))

    def deliveries(self, policy_domain: str, begin: date) -> dict[str, str]:
        """destination → state for one report."""
        found = self._query(
            "SELECT destination, state FROM report_deliveries WHERE policy_domain = ? AND "
            "period_begin = ?", (policy_domain, begin.isoformat()))
        return {str(d): str(s) for d, s in found}

    def sent_on(self, destination: str, day: date) -> int:
        """Reports sent to ``destination`` on ``day`` (by every host): the daily cap's count."""
        found = self._query(
            "SELECT COUNT(*) FROM report_deliveries WHERE destination = ? AND day = ? AND "
            "state = 'sent'", (destination, day.isoformat()))
        return int(found[0][0] or 0)

    def top(self, begin: date, end: date, by: str, limit: int
            ) -> list[tuple[str, int, dict[str, int]]]:
        """(author domain or source IP, messages, {disposition: messages}) of the period,
        most messages first (``reports top``)."""
        column = {"domain": "header_from", "source": "source_ip"}[by]
        found = self._query(
            f"SELECT {column}, disposition, SUM(messages) FROM report_rows WHERE day >= ? AND "
            f"day <= ? GROUP BY {column}, disposition", (begin.isoformat(), end.isoformat()))
        totals: dict[str, dict[str, int]] = {}
        for key, disposition, messages in found:
            totals.setdefault(str(key), {})[str(disposition)] = int(messages)
        ranked = sorted(totals.items(), key=lambda kv: (-sum(kv[1].values()), kv[0]))
        return [(key, sum(split.values()), split) for key, split in ranked[:limit]]

    # --- plumbing --------------------------------------------------------------------------

    def close(self) -> None:
        with self._lock, contextlib.suppress(Exception):  # a broken one: nothing left to do
            self._conn.close()

    def _sql(self, sql: str) -> str:
        return sql.replace("?", "%s") if self.postgres else sql

    def _execute(self, sql: str, params: Sequence[Any]) -> int:
        with self._lock:
            try:
                cur = self._conn.cursor()
                cur.execute(self._sql(sql), tuple(params))
                count = int(cur.rowcount)
                self._conn.commit()
                return count
            except Exception as exc:
                self._rollback_quietly()
                raise StoreError(f"{redact(self.location)}: {_first_line(exc)}") from None

    def _execute_many(self, sql: str, rows: Sequence[Sequence[Any]]) -> None:
        if not rows:
            return
        with self._lock:
            try:
                cur = self._conn.cursor()
                cur.executemany(self._sql(sql), [tuple(r) for r in rows])
                self._conn.commit()
            except Exception as exc:
                self._rollback_quietly()
                raise StoreError(f"{redact(self.location)}: {_first_line(exc)}") from None

    def _query(self, sql: str, params: Sequence[Any]) -> list[tuple[Any, ...]]:
        with self._lock:
            try:
                cur = self._conn.cursor()
                cur.execute(self._sql(sql), tuple(params))
                rows = [tuple(r) for r in cur.fetchall()]
                self._conn.commit()  # PostgreSQL: end the read transaction
                return rows
            except Exception as exc:
                self._rollback_quietly()
                raise StoreError(f"{redact(self.location)}: {_first_line(exc)}") from None

    def _rollback_quietly(self) -> None:
        with contextlib.suppress(Exception):  # the connection is gone; the next call says so
            self._conn.rollback()


def open_store(location: str) -> ReportStore:
    """Open (creating and migrating) the store at a file path or a ``postgresql://`` URL."""
    return ReportStore(location or default_store_path())


def _row_params(day: str, key: str, record: ReportRecord, count: int) -> tuple[Any, ...]:
    return (day, key, record.policy_domain, record.header_from, record.source_ip,
            record.envelope_from, record.disposition, record.dmarc_dkim, record.dmarc_spf,
            record.rua, json.dumps(vars(record.published), sort_keys=True),
            json.dumps([list(r) for r in record.reasons]),
            json.dumps([list(d) for d in record.dkim]),
            json.dumps(list(record.spf) if record.spf else None), count)


def _claim(r: tuple[Any, ...]) -> Claim:
    return Claim(str(r[0]), date.fromisoformat(str(r[1])), date.fromisoformat(str(r[2])),
                 str(r[3]), str(r[4]), str(r[5]), int(r[6]), str(r[7]))


def _stored(row: tuple[Any, ...]) -> StoredRow:
    spf = json.loads(str(row[12]))
    return StoredRow(
        day=date.fromisoformat(str(row[0])), policy_domain=str(row[1]),
        header_from=str(row[2]), source_ip=str(row[3]), envelope_from=str(row[4]),
        disposition=str(row[5]), dmarc_dkim=str(row[6]), dmarc_spf=str(row[7]),
        rua=str(row[8]), published=PublishedPolicy(**json.loads(str(row[9]))),
        reasons=tuple((str(t), str(c)) for t, c in json.loads(str(row[10]))),
        dkim=tuple((str(d), str(s), str(r)) for d, s, r in json.loads(str(row[11]))),
        spf=(str(spf[0]), str(spf[1]), str(spf[2])) if spf else None,
        messages=int(row[13]))


_PASSWORD_IN_TEXT = re.compile(r"(password[= ]+)\S+", re.IGNORECASE)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return _PASSWORD_IN_TEXT.sub(r"\1***", text)
