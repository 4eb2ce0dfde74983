#!/usr/bin/env bash
# The main job: set up only what the demo needs (the package and redis-server, not the
# development toolchain), then run the thundering-herd demo.
set -euo pipefail
cd "$(dirname "$0")/.."
export CACHEWISE_EXTRAS=""
# shellcheck source=scripts/setup.sh
source scripts/setup.sh
exec .venv/bin/python -m cachewise demo "$@"
