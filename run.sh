#!/usr/bin/env bash
# Set up (first time) and start the product: the dashboard on http://localhost:8501 plus its worker.
# Extra arguments go to `python -m app` (e.g. --port 8600 --workers 2 --device cuda, or --executor ray).
set -euo pipefail
cd "$(dirname "$0")"
./scripts/setup.sh
exec .venv/bin/python -m app "$@"
