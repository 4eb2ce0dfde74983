#!/usr/bin/env bash
# Benchmarks: set up like the tests, then run every scenario and rewrite docs/benchmarks.md.
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=scripts/setup.sh
source scripts/setup.sh
exec .venv/bin/python benchmarks/run.py "$@"
