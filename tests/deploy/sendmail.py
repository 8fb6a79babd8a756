"""A real Sendmail 8.17 for tests, unpacked from Debian's packages into a private prefix.

Debian's ``sendmail-bin`` conflicts with the ``postfix`` package the rest of the suite needs, so
it is never installed: ``apt-get download`` fetches the .debs (from the Debian archive the
machine's apt is set up for, nothing else), ``dpkg -x`` unpacks them into a cache folder
(``~/.cache/mailsec-milter/sendmail-VERSION``, or $MAILSEC_SENDMAIL_CACHE), and Sendmail runs
from there: libraries the system lacks come from the same prefix (LD_LIBRARY_PATH; the
unpacked binary loses its setgid bit, which would make the loader ignore that variable).

Sendmail's own needs, and how they are met without touching the system:

* its host name must contain a dot, or it sleeps a minute at start ("My unqualified host name
  ... unknown; sleeping for retry") and asks DNS about it: it runs in its own UTS and mount
  namespaces (``unshare --uts --mount``, root only) with the host name ``mta.test.example``
  and private bind mounts over /etc/hosts and /etc/resolv.conf (the latter pointing at
  127.0.0.1, where nothing answers port 53, so no query leaves the machine);
* the configuration, queue and TLS key are root-owned, mode 0600/0700, in a fresh folder
  beside the cache (not under /tmp: Sendmail refuses files below a world-writable directory,
  and for STARTTLS's key it does so silently, to syslog, which has no /dev/log here);
* ``-bD`` keeps the daemon in the foreground, so it is stopped by its PID (its per-connection
  children share its process group, which is signalled too).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import re
import shutil
import signal
import smtplib
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from tests.support.milterproc import REPO

PACKAGES = ("sendmail-bin", "sendmail-base", "sendmail-cf", "m4")
HOSTNAME = "mta.test.example"
SNIPPET_DOC = REPO / "docs" / "SENDMAIL.md"
DOWNLOAD_TIMEOUT = 300


class SendmailUnavailableError(RuntimeError):
    """Sendmail cannot be fetched or run here; the message says why."""


def _run(argv: list[str], cwd: Path | None = None, timeout: float = DOWNLOAD_TIMEOUT
         ) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, cwd=cwd, capture_output=True, text=True, timeout=timeout,
                          check=False, stdin=subprocess.DEVNULL)


def _installed(package: str) -> bool:
    result = _run(["dpkg-query", "-W", "-f=${Status}", package], timeout=30)
    return result.returncode == 0 and "ok installed" in result.stdout


def _candidate(package: str) -> str | None:
    out = _run(["apt-cache", "policy", package], timeout=60).stdout
    match = re.search(r"Candidate:\s*(\S+)", out)
    return match.group(1) if match and match.group(1) != "(none)" else None


def _download(packages: list[str], folder: Path) -> None:
    result = _run(["apt-get", "download", *packages], cwd=folder)
    if result.returncode != 0 and os.geteuid() == 0 and "Unable to locate" in result.stderr:
        # No package lists yet on this machine: fetch them once (no package is installed).
        _run(["apt-get", "update", "-qq"])
        result = _run(["apt-get", "download", *packages], cwd=folder)
    if result.returncode != 0:
        raise SendmailUnavailableError(f"apt-get download {' '.join(packages)} failed:\n"
                                  f"{result.stderr[-2000:]}")


def _library_dependencies(deb: Path) -> list[str]:
    """The shared-library packages a .deb depends on (names only)."""
    depends = _run(["dpkg-deb", "-f", str(deb), "Depends"], timeout=60).stdout
    names = [part.split()[0].split(":")[0] for part in depends.replace("|", ",").split(",")
             if part.strip()]
    return [name for name in names if name.startswith("lib")]


def prefix() -> Path:
    """The unpacked Sendmail prefix (downloaded and unpacked on first use, then cached)."""
    for tool in ("apt-get", "apt-cache", "dpkg-deb", "dpkg-query"):
        if shutil.which(tool) is None:
            raise SendmailUnavailableError(f"{tool} is not available (not a Debian system?)")
    version = _candidate("sendmail-bin")
    if version is None and os.geteuid() == 0:
        _run(["apt-get", "update", "-qq"])  # no package lists yet on this machine
        version = _candidate("sendmail-bin")
    if version is None:
        raise SendmailUnavailableError("apt knows no sendmail-bin package")
    base = Path(os.environ.get("MAILSEC_SENDMAIL_CACHE")
                or Path.home() / ".cache" / "mailsec-milter")
    root = base / f"sendmail-{version.replace(':', '_')}"
    stamp = root / ".complete"
    base.mkdir(parents=True, exist_ok=True)
    with (base / ".lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if stamp.exists():
            return root
        shutil.rmtree(root, ignore_errors=True)
        debs = root.with_name(root.name + ".debs")
        shutil.rmtree(debs, ignore_errors=True)
        debs.mkdir(parents=True)
        os.chmod(debs, 0o755)  # apt's _apt user writes downloads here when it can
        _download(list(PACKAGES), debs)
        binary = next(debs.glob("sendmail-bin_*.deb"))
        missing = [lib for lib in _library_dependencies(binary) if not _installed(lib)]
        if missing:
            _download(missing, debs)
        tree = root / "tree"
        tree.mkdir(parents=True)
        for deb in sorted(debs.glob("*.deb")):
            result = _run(["dpkg-deb", "-x", str(deb), str(tree)], timeout=120)
            if result.returncode != 0:
                raise SendmailUnavailableError(f"dpkg-deb -x {deb.name}: {result.stderr}")
        sendmail = tree / "usr/libexec/sendmail/sendmail"
        os.chmod(sendmail, 0o755)  # no setgid: the loader must honour LD_LIBRARY_PATH
        shutil.rmtree(debs, ignore_errors=True)
        stamp.write_text(version + "\n")
    return root


def tree(root: Path) -> Path:
    return root / "tree"


def sendmail_binary(root: Path) -> Path:
    return tree(root) / "usr/libexec/sendmail/sendmail"


def library_path(root: Path) -> str:
    return str(tree(root) / "usr/lib/x86_64-linux-gnu") + ":" + str(tree(root) / "lib")


def m4_binary(root: Path) -> Path:
    return tree(root) / "usr/bin/m4"


def cf_dir(root: Path) -> Path:
    return tree(root) / "usr/share/sendmail/cf"


def documented_snippet(milter_spec: str) -> str:
    """The sendmail.mc block from docs/SENDMAIL.md, with our socket instead of the default."""
    text = SNIPPET_DOC.read_text()
    match = re.search(r"<!-- begin sendmail\.mc snippet \(tested\) -->\s*```m4\n(.*?)```",
                      text, re.S)
    if match is None:
        raise AssertionError("docs/SENDMAIL.md lost its tested sendmail.mc block")
    block = match.group(1)
    assert "S=inet:8894@127.0.0.1" in block, block
    return block.replace("S=inet:8894@127.0.0.1", f"S={milter_spec}")


def render_mc(root: Path, *, smtp_port: int, relay_port: int, milter_spec: str,
              cert: Path, key: Path) -> str:
    """A minimal sendmail.mc: loopback daemon, everything relayed to a sink on relay_port,
    STARTTLS with a test certificate, and the documented milter block."""
    q = "`"
    lines = [
        "divert(-1)",
        "divert(0)dnl",
        f"include({q}{cf_dir(root)}/m4/cf.m4')dnl",
        f"VERSIONID({q}mailsec-milter test')dnl",
        f"OSTYPE({q}linux')dnl",
        f"define({q}confDOMAIN_NAME', {q}{HOSTNAME}')dnl",
        # esmtp: spelled out, or Sendmail drops [127.0.0.1] as its own address (class w).
        f"define({q}SMART_HOST', {q}esmtp:[127.0.0.1]')dnl",
        *(f"define({q}{name}_MAILER_ARGS', {q}TCP $h {relay_port}')dnl"
          for name in ("RELAY", "ESMTP", "SMTP")),
        f"define({q}confSERVER_CERT', {q}{cert}')dnl",
        f"define({q}confSERVER_KEY', {q}{key}')dnl",
        f"define({q}confCACERT', {q}{cert}')dnl",
        f"define({q}confCACERT_PATH', {q}{cert.parent}')dnl",
        f"define({q}confTO_IDENT', {q}0s')dnl",
        f"FEATURE({q}no_default_msa')dnl",
        f"FEATURE({q}nocanonify')dnl",
        f"FEATURE({q}accept_unresolvable_domains')dnl",
        f"DAEMON_OPTIONS({q}Port={smtp_port}, Addr=127.0.0.1, Name=MTA')dnl",
        documented_snippet(milter_spec).rstrip("\n"),
        f"MAILER({q}smtp')dnl",
        "",
    ]
    return "\n".join(lines)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class SendmailInstance:
    """Sendmail -bD on 127.0.0.1:smtp_port, relaying everything to 127.0.0.1:relay_port."""

    root: Path
    milter_spec: str
    relay_port: int
    smtp_port: int = field(default_factory=_free_port)
    process: subprocess.Popen[bytes] | None = None

    def __post_init__(self) -> None:
        # Not under /tmp: Sendmail refuses a TLS key or certificate below a world-writable
        # directory (and says so only to syslog). The cache folder is root's, mode 0755.
        runs = self.root.parent / "runs"
        runs.mkdir(mode=0o755, exist_ok=True)
        for folder in (runs, *runs.parents):
            mode = folder.stat().st_mode
            if mode & 0o022 and not folder.is_symlink():
                raise SendmailUnavailableError(
                    f"{folder} is group- or world-writable: Sendmail would refuse its TLS key "
                    "below it (set MAILSEC_SENDMAIL_CACHE to a folder without such parents)")
        self.workdir = Path(tempfile.mkdtemp(prefix="sendmail-", dir=runs))

    @property
    def cf_path(self) -> Path:
        return self.workdir / "sendmail.cf"

    @property
    def log_path(self) -> Path:
        return self.workdir / "sendmail.out"

    def build(self) -> str:
        """Write the .mc, run m4 on it; returns the generated sendmail.cf text."""
        os.chmod(self.workdir, 0o700)
        tls = self.workdir / "tls"
        tls.mkdir(mode=0o700)
        cert, key = tls / "cert.pem", tls / "key.pem"
        result = _run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
                       "-subj", f"/CN={HOSTNAME}", "-keyout", str(key), "-out", str(cert)],
                      timeout=60)
        if result.returncode != 0:
            raise SendmailUnavailableError(f"openssl req failed: {result.stderr}")
        os.chmod(key, 0o600)
        mc = self.workdir / "sendmail.mc"
        mc.write_text(render_mc(self.root, smtp_port=self.smtp_port, relay_port=self.relay_port,
                                milter_spec=self.milter_spec, cert=cert, key=key))
        result = _run([str(m4_binary(self.root)), str(mc)], timeout=60)
        if result.returncode != 0 or result.stderr.strip():
            raise AssertionError(f"m4 failed:\n{result.stderr}")
        self.cf_path.write_text(result.stdout)
        os.chmod(self.cf_path, 0o644)
        (self.workdir / "queue").mkdir(mode=0o700)
        (self.workdir / "hosts").write_text(
            f"127.0.0.1\t{HOSTNAME} {HOSTNAME.split('.')[0]} localhost\n::1\tlocalhost\n")
        (self.workdir / "resolv.conf").write_text(
            "nameserver 127.0.0.1\noptions timeout:1 attempts:1\n")
        return result.stdout

    def start(self, timeout: float = 30.0) -> SendmailInstance:
        if os.geteuid() != 0:
            raise SendmailUnavailableError("running Sendmail privately needs root (namespaces)")
        if shutil.which("unshare") is None:
            raise SendmailUnavailableError("unshare (util-linux) is not installed")
        self.build()
        w = self.workdir
        script = (
            "set -e\n"
            f"hostname {HOSTNAME}\n"
            f"mount --bind {w}/hosts /etc/hosts\n"
            f"mount --bind {w}/resolv.conf /etc/resolv.conf\n"
            f"export LD_LIBRARY_PATH={library_path(self.root)}\n"
            f"exec {sendmail_binary(self.root)} -bD -C {self.cf_path}"
            f" -O QueueDirectory={w}/queue -O PidFile={w}/sendmail.pid"
            f" -X {w}/smtp-trace.log\n"
        )
        (w / "start.sh").write_text(script)
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                ["unshare", "--uts", "--mount", "--propagation", "private", "sh",
                 str(w / "start.sh")],
                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                start_new_session=True, env={"PATH": os.environ.get("PATH", "/usr/bin:/bin")})
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise SendmailUnavailableError(f"sendmail exited at start:\n{self.log()}")
            try:
                with smtplib.SMTP("127.0.0.1", self.smtp_port, timeout=5) as smtp:
                    smtp.noop()
                return self
            except (OSError, smtplib.SMTPException):
                time.sleep(0.1)
        self.stop()
        raise SendmailUnavailableError(f"sendmail did not answer within {timeout}s:\n{self.log()}")

    def log(self) -> str:
        parts = []
        for path in (self.log_path, self.workdir / "smtp-trace.log"):
            with contextlib.suppress(OSError):
                parts.append(f"--- {path.name}\n" + path.read_text(errors="replace")[-6000:])
        return "\n".join(parts)

    def queued(self) -> list[str]:
        """Queue files, each qf file with its delivery status line (M...) if any."""
        out = []
        for path in sorted((self.workdir / "queue").iterdir()):
            status = ""
            if path.name.startswith("qf"):
                status = " ".join(line for line in path.read_text(errors="replace").splitlines()
                                  if line.startswith("M"))
            out.append(f"{path.name} {status}".strip())
        return out

    def stop(self) -> None:
        """SIGTERM to the daemon and its process group (its per-connection children)."""
        if self.process is None:
            return
        pid = self.process.pid
        if self.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pid, signal.SIGTERM)
            try:
                self.process.wait(15)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(pid, signal.SIGKILL)
                self.process.wait(5)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pid, signal.SIGKILL)  # any delivery child left behind
        self.process = None

    def cleanup(self) -> None:
        self.stop()
        shutil.rmtree(self.workdir, ignore_errors=True)
