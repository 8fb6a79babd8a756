#!/usr/bin/env bash
# Quick start, command 2: install the test dependencies (Postfix, Unbound, Prometheus, the
# Python test tools) and run the whole suite: lint, types, unit, conformance, adapter and
# end-to-end tests. Extra arguments go to pytest (e.g. -k spf, -m "not e2e").
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
cd "$here"
scripts/install-deps.sh --test
echo "== ruff"; .venv/bin/ruff check mailsec_milter tests
echo "== mypy --strict"; .venv/bin/mypy
echo "== pytest"; exec .venv/bin/python -m pytest "$@"
