#!/usr/bin/env bash
# The main job: set everything up, then run the thundering-herd demo.
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=scripts/setup.sh
source scripts/setup.sh
exec .venv/bin/python -m cachewise demo "$@"
