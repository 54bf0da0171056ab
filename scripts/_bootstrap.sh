# Shared bootstrap for scripts/test and scripts/demo (sourced, not executed).
# Creates .venv with a Python >= 3.11, installs the project (and extras), and installs
# dbus-daemon with apt when it is missing and we are root. Idempotent and quiet when done.

pick_python() {
    local c
    for c in "${PYTHON:-}" python3.12 python3.11 python3.13 python3; do
        [ -n "$c" ] || continue
        if command -v "$c" >/dev/null 2>&1 &&
            "$c" -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else 1)' 2>/dev/null; then
            echo "$c"; return 0
        fi
    done
    echo "mbclient needs Python >= 3.11 (none found; set PYTHON=...)" >&2
    return 1
}

need_system_programs() {
    local missing=()
    command -v dbus-daemon >/dev/null 2>&1 || missing+=(dbus-daemon)
    command -v dbus-send >/dev/null 2>&1 || missing+=(dbus-send)
    [ ${#missing[@]} -eq 0 ] && return 0
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
        echo "installing ${missing[*]} (Debian package dbus)..." >&2
        (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq dbus >/dev/null) >&2
    else
        echo "missing ${missing[*]}: install the Debian package 'dbus' (sudo apt-get install dbus)" >&2
        return 1
    fi
}

bootstrap_env() {
    local extra=${1:-}
    need_system_programs
    VENV=${MBCLIENT_VENV:-$here/.venv}
    local py; py=$(pick_python)
    if [ ! -x "$VENV/bin/python" ]; then
        "$py" -m venv "$VENV" >&2
    fi
    local stamp="$VENV/.mbclient-installed-$extra"
    if [ ! -f "$stamp" ] || [ "$here/pyproject.toml" -nt "$stamp" ]; then
        echo "installing mbclient${extra:+[$extra]} into $VENV ..." >&2
        "$VENV/bin/python" -m pip install -q --disable-pip-version-check -e "$here${extra:+[$extra]}" >&2
        touch "$stamp"
    fi
    export VENV
}
