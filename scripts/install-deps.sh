#!/usr/bin/env bash
# Installs what mailsec-milter needs on Debian 12, idempotently.
#   scripts/install-deps.sh          runtime: libmilter, a C toolchain, the Python venv in .venv
#   scripts/install-deps.sh --test   also the test stack: Postfix, Unbound, Prometheus, swaks...
#   scripts/install-deps.sh --bench  also the benchmark's peers (OpenDKIM, OpenDMARC, rspamd)
#                                    and py-spy for --profile;
#                                    implies --test (bench/ runs on the test stack)
# It never stops, disables or reconfigures a service it did not itself bring up: package scripts
# are kept from starting anything with a temporary policy-rc.d (removed again if we created it);
# the state of every service these packages could start (Postfix, Unbound, Prometheus, the
# benchmark's peers) is recorded before the install, and only what the install changed is undone
# afterwards (a unit it started is stopped, one it enabled is disabled, a daemon it started by PID
# file is stopped). A host's own Postfix or Unbound, running before, is left exactly as it was.
# Postfix's debconf question is preseeded only when Postfix itself is being installed.
#
# INSTALL_DEPS_ROOT (tests only, tests/deploy/test_install_deps.py): a directory prefixed to the
# paths the script inspects or writes (/run/systemd/system, /usr/sbin/policy-rc.d, PID files),
# so a fake systemd host can be built from PATH shims without touching the real one.
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
# postgresql: the report store's tests run a private cluster of their own (tests/support/pgserver.py).
test_pkgs=(postfix unbound prometheus openssl ca-certificates iproute2 systemd procps groff-base
           postgresql)
# The benchmark's peer milters (bench/targets.py runs them from private configs, never as the
# system's services). --no-install-recommends keeps rspamd's redis-server out: not needed.
bench_pkgs=(opendkim opendmarc rspamd)
root=${INSTALL_DEPS_ROOT:-}
# Every service the packages above (or a recommended package) ship: unit, the PID file of its
# Debian init script, the process name (comm, at most 15 characters) behind that PID.
services=(postfix:/var/spool/postfix/pid/master.pid:master
          unbound:/run/unbound.pid:unbound
          prometheus:/run/prometheus/prometheus.pid:prometheus
          prometheus-node-exporter:/run/prometheus/prometheus-node-exporter.pid:prometheus-node
          rspamd:/run/rspamd/rspamd.pid:rspamd
          opendkim:/run/opendkim/opendkim.pid:opendkim
          opendmarc:/run/opendmarc/opendmarc.pid:opendmarc
          redis-server:/run/redis/redis-server.pid:redis-server
          postgresql:/run/postgresql/15-main.pid:postgres)

missing=()
for p in "${runtime_pkgs[@]}"; do dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'ok installed' || missing+=("$p"); done
if [ $want_test -eq 1 ]; then
  for p in "${test_pkgs[@]}"; do dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'ok installed' || missing+=("$p"); done
fi
if [ $want_bench -eq 1 ]; then
  for p in "${bench_pkgs[@]}"; do dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'ok installed' || missing+=("$p"); done
fi

have_systemd() { command -v systemctl >/dev/null && [ -d "$root/run/systemd/system" ]; }
# A live PID from a PID file whose process has the service's name, else nothing.
pid_of() {
  local comm=$1 file=$2 pid
  pid=$(sudo_ cat "$root$file" 2>/dev/null | tr -dc '0-9') || true
  [ -n "$pid" ] && [ -d "/proc/$pid" ] || return 0
  [ "$(cat "/proc/$pid/comm" 2>/dev/null)" = "$comm" ] && echo "$pid"
  return 0
}
# "unit active enabled pid" per service, to tell afterwards what the install changed.
service_state() {
  local entry unit rest file comm active enabled
  for entry in "${services[@]}"; do
    unit=${entry%%:*}; rest=${entry#*:}; file=${rest%%:*}; comm=${rest#*:}; active=-; enabled=-
    if have_systemd; then
      active=$(systemctl is-active "$unit.service" 2>/dev/null) || true
      enabled=$(systemctl is-enabled "$unit.service" 2>/dev/null) || true
    fi
    echo "$unit ${active:--} ${enabled:--} $(pid_of "$comm" "$file")"
  done
}
# Stop (and disable) what the install started (or enabled) that was not so before: by systemd
# unit, else by the PID in the service's PID file. Whatever was so before stays as it was.
undo_started_services() {
  local before=$1 unit active enabled pid was_active was_enabled was_pid entry rest="" file=""
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
    for entry in "${services[@]}"; do
      if [ "${entry%%:*}" = "$unit" ]; then rest=${entry#*:}; file=$root${rest%%:*}; fi
    done
    if [ -n "$pid" ] && [ "$pid" != "${was_pid:-}" ]; then
      echo "install-deps: stopping $unit (PID $pid from $file, started by the package install)" >&2
      sudo_ kill -TERM "$pid" 2>/dev/null || true
      for _ in $(seq 50); do [ -d "/proc/$pid" ] || break; sleep 0.2; done
    fi
  done <<<"$(service_state)"
}

if [ ${#missing[@]} -gt 0 ]; then
  echo "install-deps: apt packages to install: ${missing[*]}" >&2
  policy_rc="$root/usr/sbin/policy-rc.d"
  created_policy=0
  if [ ! -e "$policy_rc" ]; then
    printf '#!/bin/sh\nexit 101\n' | sudo_ tee "$policy_rc" >/dev/null
    sudo_ chmod +x "$policy_rc"
    created_policy=1
  fi
  trap 'if [ $created_policy -eq 1 ]; then sudo_ rm -f "$policy_rc"; fi' EXIT
  # Only a Postfix being installed is asked its debconf question; an installed one is not touched.
  for p in "${missing[@]}"; do
    if [ "$p" = postfix ]; then
      echo "postfix postfix/main_mailer_type select No configuration" | sudo_ debconf-set-selections
    fi
  done
  sudo_ env DEBIAN_FRONTEND=noninteractive apt-get update -qq
  services_before=$(service_state)
  sudo_ env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  undo_started_services "$services_before"
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
