#!/usr/bin/env bash
# Set up (first time) and run the whole test suite. Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")"
./scripts/setup.sh --with-ray --with-test-provider  # the cluster tests need Ray; the log-in test its provider
.venv/bin/ruff check .
# Two test processes by default (KDAUDIT_TEST_WORKERS=0 runs in one): most tests use one core, and a
# file's tests stay together in one process so its module fixtures are built once.
exec .venv/bin/python -m pytest -n "${KDAUDIT_TEST_WORKERS:-2}" --dist loadfile "$@"
