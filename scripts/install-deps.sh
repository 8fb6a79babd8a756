#!/usr/bin/env bash
# Installs what mailsec-milter needs on Debian 12, idempotently.
#   scripts/install-deps.sh          runtime: libmilter, a C toolchain, the Python venv in .venv
#   scripts/install-deps.sh --test   also the test stack: Postfix, Unbound, Prometheus, swaks...
#   scripts/install-deps.sh --bench  also the benchmark's peers (OpenDKIM, OpenDMARC, rspamd)
#                                    and py-spy for --profile;
#                                    implies --test (bench/ runs on the test stack)
# It never starts or enables a system service: package scripts are kept from doing so with a
# temporary policy-rc.d (removed again if we created it), and a service of the benchmark's
# peers that the install started or enabled anyway is stopped/disabled again afterwards.
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
want_test=0
want_bench=0
for arg in "$@"; do
  case "$arg" in
    --test) want_test=1 ;;
    --bench) want_bench=1; want_test=1 ;;
    *) echo "usage: $0 [--test] [--bench]" >&2; exit 2 ;;
  esac
done

sudo_() { if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi; }

runtime_pkgs=(libmilter1.0.1 libmilter-dev gcc python3 python3-dev python3-venv)
# procps: /bin/kill, which the systemd unit's ExecReload uses; groff-base renders the man page.
test_pkgs=(postfix unbound prometheus openssl ca-certificates iproute2 systemd procps groff-base)
# The benchmark's peer milters (bench/targets.py runs them from private configs, never as the
# system's services). --no-install-recommends keeps rspamd's redis-server out: not needed.
bench_pkgs=(opendkim opendmarc rspamd)
# Services those packages (or a recommended redis) ship, with the PID file of their init script.
bench_services=(rspamd:/run/rspamd/rspamd.pid opendkim:/run/opendkim/opendkim.pid
                opendmarc:/run/opendmarc/opendmarc.pid redis-server:/run/redis/redis-server.pid)

missing=()
for p in "${runtime_pkgs[@]}"; do dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'ok installed' || missing+=("$p"); done
if [ $want_test -eq 1 ]; then
  for p in "${test_pkgs[@]}"; do dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'ok installed' || missing+=("$p"); done
fi
if [ $want_bench -eq 1 ]; then
  for p in "${bench_pkgs[@]}"; do dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'ok installed' || missing+=("$p"); done
fi

have_systemd() { command -v systemctl >/dev/null && [ -d /run/systemd/system ]; }
# A live PID from a PID file whose process has the service's name, else nothing.
pid_of() {
  local name=$1 file=$2 pid
  pid=$(sudo_ cat "$file" 2>/dev/null | tr -dc '0-9') || true
  [ -n "$pid" ] && [ -d "/proc/$pid" ] || return 0
  case "$(cat "/proc/$pid/comm" 2>/dev/null)" in "$name"*) echo "$pid" ;; esac
}
# "unit active enabled pid" per bench service, to tell afterwards what the install changed.
service_state() {
  local entry unit file active enabled
  for entry in "${bench_services[@]}"; do
    unit=${entry%%:*}; file=${entry#*:}; active=-; enabled=-
    if have_systemd; then
      active=$(systemctl is-active "$unit.service" 2>/dev/null) || true
      enabled=$(systemctl is-enabled "$unit.service" 2>/dev/null) || true
    fi
    echo "$unit ${active:--} ${enabled:--} $(pid_of "$unit" "$file")"
  done
}
# Stop (and disable) what the install started (or enabled) that was not so before: by systemd
# unit, else by the PID in the service's PID file. Services that were running before stay.
undo_bench_services() {
  local before=$1 unit active enabled pid was_active was_enabled was_pid entry file=""
  while read -r unit active enabled pid; do
    read -r _ was_active was_enabled was_pid < <(grep "^$unit " <<<"$before" || echo "$unit - - ")
    if have_systemd; then
      if [ "$active" = active ] && [ "$was_active" != active ]; then
        echo "install-deps: stopping $unit.service (started by the package install)" >&2
        sudo_ systemctl stop "$unit.service" || true
      fi
      if [ "$enabled" = enabled ] && [ "$was_enabled" != enabled ]; then
        echo "install-deps: disabling $unit.service (enabled by the package install)" >&2
        sudo_ systemctl disable "$unit.service" >/dev/null 2>&1 || true
      fi
    fi
    for entry in "${bench_services[@]}"; do [ "${entry%%:*}" = "$unit" ] && file=${entry#*:}; done
    pid=$(pid_of "$unit" "$file")
    if [ -n "$pid" ] && [ "$pid" != "${was_pid:-}" ]; then
      echo "install-deps: stopping $unit (PID $pid from $file, started by the package install)" >&2
      sudo_ kill -TERM "$pid" 2>/dev/null || true
      for _ in $(seq 50); do [ -d "/proc/$pid" ] || break; sleep 0.2; done
    fi
  done <<<"$(service_state)"
}

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
  services_before=$(service_state)
  sudo_ env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  if [ $want_bench -eq 1 ]; then undo_bench_services "$services_before"; fi
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
[ $want_bench -eq 1 ] && extras="[test,bench]"
stamp="$here/.venv/.installed"
[ $want_test -eq 1 ] && stamp="$stamp-test"
[ $want_bench -eq 1 ] && stamp="$stamp-bench"
if [ ! -f "$stamp" ] || [ "$here/pyproject.toml" -nt "$stamp" ]; then
  "$here/.venv/bin/pip" install -q --upgrade pip >/dev/null
  "$here/.venv/bin/pip" install -q -e "$here$extras"
  touch "$stamp"
fi
