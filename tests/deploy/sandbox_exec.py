"""Exec a command under the seccomp rules of systemd/mailsec-milter.service (no systemd here).

    python sandbox_exec.py [--user NAME] [--syscall-filter SPEC]... [--mdwe]
                           [--address-families AF_UNIX,AF_INET,...] -- COMMAND ARG...

What systemd 252 loads for the unit's settings, rebuilt with libseccomp (pyseccomp):

* ``SystemCallFilter=`` lines, in order: an allow list (the first line starts from nothing, a
  ``~`` line removes), expanded from ``systemd-analyze syscall-filter`` so the groups are
  exactly this systemd's; anything else fails with EPERM (``SystemCallErrorNumber=EPERM``);
* ``MemoryDenyWriteExecute=yes``: mmap() with PROT_WRITE|PROT_EXEC, mprotect() and
  pkey_mprotect() adding PROT_EXEC, shmat() with SHM_EXEC fail with EPERM (as in systemd's
  seccomp_memory_deny_write_execute());
* ``RestrictAddressFamilies=``: socket() for other families fails with EAFNOSUPPORT;
* ``NoNewPrivileges=yes`` (needed to load a filter unprivileged; systemd sets it too).

``--user`` switches to that account first, as systemd does for ``User=`` (the filters then
come on top, as systemd applies them last before exec). Where that account cannot read the
checkout (a clone below a private folder), a test starts the daemon as root instead and lets
its own privilege drop through with ``--also-allow setgroups --also-allow setuid``: calls that
never happen under the unit, which starts the daemon as ``User=`` directly.
"""

from __future__ import annotations

import argparse
import errno
import os
import pwd
import re
import socket
import subprocess
import sys

import pyseccomp as seccomp

PROT_WRITE, PROT_EXEC = 0x2, 0x4
SHM_EXEC = 0o100000


def expand_group(name: str, seen: set[str] | None = None) -> set[str]:
    """The system calls in a systemd syscall group (``@name``), nested groups expanded."""
    seen = set() if seen is None else seen
    if name in seen:
        return set()
    seen.add(name)
    out = subprocess.run(["systemd-analyze", "syscall-filter", name], check=True,
                         capture_output=True, text=True, timeout=60).stdout
    calls: set[str] = set()
    for line in out.splitlines()[1:]:
        item = line.strip()
        if not item or item.startswith("#"):
            continue
        if item.startswith("@"):
            calls |= expand_group(item, seen)
        elif re.fullmatch(r"[a-z0-9_]+", item):
            calls.add(item)
    return calls


def expand(spec: str) -> tuple[bool, set[str]]:
    """One SystemCallFilter= value: (deny?, its system calls)."""
    deny = spec.startswith("~")
    calls: set[str] = set()
    for item in spec.lstrip("~").split():
        calls |= expand_group(item) if item.startswith("@") else {item}
    return deny, calls


def allowed_calls(specs: list[str]) -> set[str]:
    allowed: set[str] = set()
    for spec in specs:
        deny, calls = expand(spec)
        if deny:
            allowed -= calls
        else:
            allowed |= calls
    return allowed


def _resolvable(name: str) -> bool:
    try:
        return seccomp.resolve_syscall(seccomp.Arch.NATIVE, name) >= 0
    except (ValueError, OSError):
        return False


def load_filters(specs: list[str], mdwe: bool, families: list[str],
                 also_allow: list[str]) -> None:
    # Expand the groups first: systemd-analyze runs as a child process.
    allowed = sorted(allowed_calls(specs) | set(also_allow)) if specs else []
    if mdwe or families:
        rules = seccomp.SyscallFilter(seccomp.ALLOW)
        if mdwe:
            both = PROT_WRITE | PROT_EXEC
            rules.add_rule(seccomp.ERRNO(errno.EPERM), "mmap",
                           seccomp.Arg(2, seccomp.MASKED_EQ, both, both))
            for name in ("mprotect", "pkey_mprotect"):
                rules.add_rule(seccomp.ERRNO(errno.EPERM), name,
                               seccomp.Arg(2, seccomp.MASKED_EQ, PROT_EXEC, PROT_EXEC))
            rules.add_rule(seccomp.ERRNO(errno.EPERM), "shmat",
                           seccomp.Arg(2, seccomp.MASKED_EQ, SHM_EXEC, SHM_EXEC))
        if families:
            keep = {int(getattr(socket, name)) for name in families}
            for family in range(64):
                if family not in keep:
                    rules.add_rule(seccomp.ERRNO(errno.EAFNOSUPPORT), "socket",
                                   seccomp.Arg(0, seccomp.EQ, family))
            rules.add_rule(seccomp.ERRNO(errno.EAFNOSUPPORT), "socket",
                           seccomp.Arg(0, seccomp.GE, 64))
        rules.load()
    # The allow list goes last: it may deny seccomp() itself. execve must stay allowed for
    # our own exec of the command (systemd installs its filter just before that exec, too).
    if specs:
        allow = seccomp.SyscallFilter(seccomp.ERRNO(errno.EPERM))
        for name in [*allowed, "execve"]:
            if _resolvable(name):
                allow.add_rule(seccomp.ALLOW, name)
        allow.load()


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--user")
    parser.add_argument("--syscall-filter", action="append", default=[])
    parser.add_argument("--mdwe", action="store_true")
    parser.add_argument("--address-families", default="")
    parser.add_argument("--also-allow", action="append", default=[])
    parser.add_argument("command", nargs=argparse.REMAINDER)
    args = parser.parse_args(argv)
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        parser.error("no command")
    if args.user and os.geteuid() == 0:
        entry = pwd.getpwnam(args.user)
        os.setgroups([])
        os.setgid(entry.pw_gid)
        os.setuid(entry.pw_uid)
    families = [f for f in args.address_families.replace(",", " ").split() if f]
    load_filters(args.syscall_filter, args.mdwe, families, args.also_allow)
    os.execv(command[0], command)
    return 127  # pragma: no cover


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
