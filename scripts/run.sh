#!/usr/bin/env bash
# Quick start, command 1: install what is missing, then run the milter in the foreground on the
# embedded default configuration (inet:8894@127.0.0.1). Extra arguments go to `mailsec-milter run`.
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
"$here/scripts/install-deps.sh"
exec "$here/.venv/bin/mailsec-milter" run "$@"
