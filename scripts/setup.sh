# Sourced by the README commands: venv, the package (with the extras in CACHEWISE_EXTRAS, "dev"
# unless set: the demo sets it empty and installs only the package), redis-server. Idempotent.
PY=${PYTHON:-python3}
extras=${CACHEWISE_EXTRAS-dev}
if [ ! -x .venv/bin/python ]; then
    "$PY" -m venv .venv
fi
stamp=".venv/.cachewise-installed-${extras:-base}"
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ] \
    || [ setup.py -nt "$stamp" ] || [ -n "$(find src/cachewise -name '_speedups*.[ch]' -newer "$stamp")" ]; then
    .venv/bin/python -m pip install -q --upgrade pip
    .venv/bin/python -m pip install -q -e ".${extras:+[$extras]}"
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
