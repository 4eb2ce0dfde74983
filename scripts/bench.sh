#!/usr/bin/env bash
# Benchmarks: a venv of their own (.venv-bench: cachewise + the pinned peers), a redis-server on
# loopback started and stopped by the run, then every scenario; rewrites docs/benchmarks.md.
set -euo pipefail
cd "$(dirname "$0")/.."
if ! command -v redis-server >/dev/null 2>&1; then
    SUDO=""; [ "$(id -u)" = 0 ] || SUDO="sudo"
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq redis-server >/dev/null
fi
PY=${PYTHON:-python3}
[ -x .venv-bench/bin/python ] || "$PY" -m venv .venv-bench
stamp=.venv-bench/.installed
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ] || [ benchmarks/requirements.txt -nt "$stamp" ] \
    || [ setup.py -nt "$stamp" ] || [ -n "$(find src/cachewise -name '_speedups*.[ch]' -newer "$stamp")" ]; then
    .venv-bench/bin/python -m pip install -q --upgrade pip
    .venv-bench/bin/python -m pip install -q -e . -r benchmarks/requirements.txt
    touch "$stamp"
fi
exec .venv-bench/bin/python benchmarks/run.py "$@"
