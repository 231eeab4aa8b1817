#!/usr/bin/env bash
# Run the whole test suite (unit, lint, integration with real QEMU under KVM
# or TCG) after making sure everything is set up (cached: see setup.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh --no-run
exec .venv/bin/pytest "$@"
