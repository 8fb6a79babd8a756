"""A private PostgreSQL for tests: its own cluster in a temporary directory, on a loopback port
and a unix socket in that directory — never the host's clusters or their configuration.

Started the way the end-to-end tests start a private Postfix: the Debian package's binaries
(``scripts/install-deps.sh --test`` installs ``postgresql``), ``initdb`` as the ``postgres``
user when we are root (initdb refuses root), stopped by ``pg_ctl stop`` on its own data
directory. Password authentication over TCP (scram-sha-256), so a wrong password really fails.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from types import TracebackType

SUPERUSER_PASSWORD = "super-secret-test"
APP_USER = "mailsec"
APP_PASSWORD = "app-secret-test"


def postgres_bin() -> Path | None:
    """The directory of the newest installed server binaries (initdb, pg_ctl), if any."""
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"),
                   key=lambda p: int(Path(p).parent.parent.name) if
                   Path(p).parent.parent.name.isdigit() else 0)
    return Path(found[-1]).parent if found else None


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class PostgresServer:
    """``with PostgresServer() as pg: pg.url`` — a database ``mailsec`` owned by the user
    ``mailsec`` (password auth on 127.0.0.1)."""

    def __init__(self) -> None:
        bindir = postgres_bin()
        if bindir is None:
            raise RuntimeError("PostgreSQL server binaries not found "
                               "(scripts/install-deps.sh --test installs them)")
        self.bindir = bindir
        self.port = _free_port()
        self.root = Path(tempfile.mkdtemp(prefix="mailsec-pg-"))
        self.data = self.root / "data"
        self.run_as: list[str] = []
        if os.geteuid() == 0:
            owner = pwd.getpwnam("postgres")
            os.chown(self.root, owner.pw_uid, owner.pw_gid)
            self.run_as = ["runuser", "-u", "postgres", "--"]
        self.started = False

    @property
    def url(self) -> str:
        return (f"postgresql://{APP_USER}:{APP_PASSWORD}@127.0.0.1:{self.port}/mailsec")

    def url_with_password(self, password: str) -> str:
        return f"postgresql://{APP_USER}:{password}@127.0.0.1:{self.port}/mailsec"

    def _run(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return subprocess.run([*self.run_as, *args], check=check, capture_output=True,
                              text=True, timeout=120, cwd=self.root)

    def start(self) -> PostgresServer:
        pwfile = self.root / "pw"
        pwfile.write_text(SUPERUSER_PASSWORD + "\n")
        if self.run_as:
            shutil.chown(pwfile, "postgres")
        self._run(str(self.bindir / "initdb"), "-D", str(self.data), "-U", "postgres",
                  f"--pwfile={pwfile}", "--auth-local=trust", "--auth-host=scram-sha-256",
                  "-E", "UTF8", "--locale=C")
        self._run(str(self.bindir / "pg_ctl"), "-D", str(self.data), "-l",
                  str(self.root / "server.log"), "-w", "-t", "60", "-o",
                  f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1 "
                  "-c fsync=off -c max_connections=50", "start")
        self.started = True
        self.psql(f"CREATE ROLE {APP_USER} LOGIN PASSWORD '{APP_PASSWORD}'")
        self.psql(f"CREATE DATABASE mailsec OWNER {APP_USER}")
        return self

    def psql(self, sql: str, database: str = "postgres") -> str:
        """Run SQL as the superuser over the private unix socket; returns the output."""
        done = self._run(str(self.bindir / "psql"), "-h", str(self.root), "-p",
                         str(self.port), "-U", "postgres", "-d", database, "-v",
                         "ON_ERROR_STOP=1", "-At", "-c", sql)
        return done.stdout

    def stop(self) -> None:
        if self.started:
            self._run(str(self.bindir / "pg_ctl"), "-D", str(self.data), "-m", "fast", "-w",
                      "-t", "60", "stop", check=False)
            self.started = False

    def restart(self) -> None:
        """Stop and start the same cluster (for outage tests)."""
        self.stop()
        self._run(str(self.bindir / "pg_ctl"), "-D", str(self.data), "-l",
                  str(self.root / "server.log"), "-w", "-t", "60", "-o",
                  f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1 "
                  "-c fsync=off -c max_connections=50", "start")
        self.started = True

    def close(self) -> None:
        self.stop()
        for _ in range(20):
            try:
                shutil.rmtree(self.root)
                return
            except OSError:
                time.sleep(0.1)

    def __enter__(self) -> PostgresServer:
        try:
            return self.start()
        except BaseException:
            self.close()
            raise

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()
