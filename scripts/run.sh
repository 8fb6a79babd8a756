#!/usr/bin/env bash
# Quick start, command 1: install what is missing, then run the milter in the foreground on the
# embedded default configuration (inet:8894@127.0.0.1). Extra arguments go to `mailsec-milter run`.
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
"$here/scripts/install-deps.sh"
# The daemon refuses to keep running as root: started as root, it switches to "nobody" here
# (a real installation uses a dedicated account: see docs/MILTER_README.md and systemd/).
if [ "$(id -u)" -eq 0 ]; then
  exec "$here/.venv/bin/mailsec-milter" run --user nobody "$@"
fi
exec "$here/.venv/bin/mailsec-milter" run "$@"
