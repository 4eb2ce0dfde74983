# Sourced by the README commands: venv, package + dev extras, redis-server. Idempotent.
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
    "$PY" -m venv .venv
fi
stamp=.venv/.cachewise-installed
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
    .venv/bin/python -m pip install -q --upgrade pip
    .venv/bin/python -m pip install -q -e '.[dev]'
    touch "$stamp"
fi
if ! command -v redis-server >/dev/null 2>&1; then
    echo "redis-server not found: installing Debian's package" >&2
    SUDO=""
    [ "$(id -u)" = 0 ] || SUDO="sudo"
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq redis-server >/dev/null
    # Debian's package starts a system service on 6379; the tests never use it (they start their
    # own servers on free ports), so leave it as the package set it up.
fi
