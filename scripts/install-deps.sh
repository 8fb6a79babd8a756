#!/usr/bin/env bash
# Installs what mailsec-milter needs on Debian 12, idempotently.
#   scripts/install-deps.sh          runtime: libmilter, a C toolchain, the Python venv in .venv
#   scripts/install-deps.sh --test   also the test stack: Postfix, Unbound, Prometheus, swaks...
# It never starts or enables a system service: package scripts are kept from doing so with a
# temporary policy-rc.d (removed again if we created it).
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
want_test=0
[ "${1:-}" = "--test" ] && want_test=1

sudo_() { if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi; }

runtime_pkgs=(libmilter1.0.1 libmilter-dev gcc python3 python3-dev python3-venv)
# procps: /bin/kill, which the systemd unit's ExecReload uses; groff-base renders the man page.
test_pkgs=(postfix unbound prometheus openssl ca-certificates iproute2 systemd procps groff-base)

missing=()
for p in "${runtime_pkgs[@]}"; do dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'ok installed' || missing+=("$p"); done
if [ $want_test -eq 1 ]; then
  for p in "${test_pkgs[@]}"; do dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'ok installed' || missing+=("$p"); done
fi

if [ ${#missing[@]} -gt 0 ]; then
  echo "install-deps: apt packages to install: ${missing[*]}" >&2
  created_policy=0
  if [ ! -e /usr/sbin/policy-rc.d ]; then
    printf '#!/bin/sh\nexit 101\n' | sudo_ tee /usr/sbin/policy-rc.d >/dev/null
    sudo_ chmod +x /usr/sbin/policy-rc.d
    created_policy=1
  fi
  trap '[ $created_policy -eq 1 ] && sudo_ rm -f /usr/sbin/policy-rc.d' EXIT
  echo "postfix postfix/main_mailer_type select No configuration" | sudo_ debconf-set-selections
  sudo_ env DEBIAN_FRONTEND=noninteractive apt-get update -qq
  sudo_ env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  # The Debian prometheus package enables its own service; we only want the binary.
  if [ $want_test -eq 1 ] && command -v systemctl >/dev/null && [ -d /run/systemd/system ]; then
    sudo_ systemctl disable --now prometheus prometheus-node-exporter unbound postfix >/dev/null 2>&1 || true
  fi
fi

# Debian's own interpreter by default: its standard library is readable by every user, which
# the daemon needs after it drops root (a pyenv under /root is not); PYTHON overrides.
py=${PYTHON:-}
if [ -z "$py" ]; then
  if [ -x /usr/bin/python3 ]; then py=/usr/bin/python3; else py=python3; fi
fi
if [ -x "$here/.venv/bin/python" ] && ! grep -q "^home = $(dirname "$(readlink -f "$py")")\$" "$here/.venv/pyvenv.cfg" 2>/dev/null; then
  echo "install-deps: .venv was built with another interpreter; rebuilding it with $py" >&2
  rm -rf "$here/.venv"
fi
if [ ! -x "$here/.venv/bin/python" ]; then
  "$py" -m venv "$here/.venv"
fi
extras=""
[ $want_test -eq 1 ] && extras="[test]"
stamp="$here/.venv/.installed${extras:+-test}"
if [ ! -f "$stamp" ] || [ "$here/pyproject.toml" -nt "$stamp" ]; then
  "$here/.venv/bin/pip" install -q --upgrade pip >/dev/null
  "$here/.venv/bin/pip" install -q -e "$here$extras"
  touch "$stamp"
fi
