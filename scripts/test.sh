#!/usr/bin/env bash
# The test command: sets up everything a fresh machine needs, then runs ruff, mypy, the docs
# build and pytest.
#   venv in .venv, the package with its dev extras, and a redis-server binary (Debian's package
#   when none is on PATH). Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=scripts/setup.sh
source scripts/setup.sh
.venv/bin/ruff check src tests benchmarks examples
.venv/bin/mypy
# The documentation site, with every page, link and API reference entry checked.
NO_MKDOCS_2_WARNING=1 .venv/bin/mkdocs build --strict --quiet --site-dir "$(mktemp -d)"
exec .venv/bin/pytest "$@"
