#!/usr/bin/env bash
# Set up (first time) and start the product. Extra arguments go to the demo command.
set -euo pipefail
cd "$(dirname "$0")"
./scripts/setup.sh
exec .venv/bin/python -m kdcore demo --quick "$@"
