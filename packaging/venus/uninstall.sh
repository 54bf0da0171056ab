#!/bin/sh
# Remove mbclient from a GX device: stops the service, removes the /service link, the
# /data/rc.local lines and the serial-starter integration, and gives the serial port back
# to serial-starter. mbclient.conf (and a --settings file kept in /data/<name>) stay unless
# --purge is given; Victron's own settings (device instances, custom names) are never touched.
set -eu

usage() {
    cat <<EOF
usage: uninstall.sh [--purge] [--root DIR] [--name NAME]
  --purge      also delete /data/NAME (configuration) and /var/log/NAME
  --root DIR   the root it was installed under (default: derived from this script's place)
  --name NAME  service name (default: derived from this script's place, else mbclient)
EOF
}
die() { echo "uninstall.sh: $*" >&2; exit 2; }
say() { echo "$*"; }

here=$(cd "$(dirname "$0")" && pwd -P)
PURGE=0
ROOT=
NAME=
case $here in
    */data/*) NAME=${here##*/}; ROOT=${here%/data/"$NAME"} ;;
esac
while [ $# -gt 0 ]; do
    case $1 in
        -h|--help) usage; exit 0 ;;
        --purge) PURGE=1; shift ;;
        --root) [ $# -ge 2 ] || die "--root needs a value"; ROOT=${2%/}; shift 2 ;;
        --name) [ $# -ge 2 ] || die "--name needs a value"; NAME=$2; shift 2 ;;
        *) die "unknown option $1 (see --help)" ;;
    esac
done
NAME=${NAME:-mbclient}
case $NAME in ''|*[!A-Za-z0-9_-]*) die "bad name '$NAME'" ;; esac

app=$ROOT/data/$NAME
[ -d "$app" ] || die "$app does not exist: nothing to remove"
on_device() { [ -z "$ROOT" ]; }
ss=$ROOT/opt/victronenergy/serial-starter

TTY=
PORT_OWNER=stop-tty
# shellcheck disable=SC1091
[ -r "$app/mbclient.conf" ] && . "$app/mbclient.conf"
TTY=${TTY#/dev/}

# -- stop ---------------------------------------------------------------------------------------
if [ -L "$ROOT/service/$NAME" ]; then
    rm -f "$ROOT/service/$NAME"
    say "removed $ROOT/service/$NAME"
fi
if on_device && command -v svc >/dev/null 2>&1; then
    # Removing the link does not stop supervise: tell it to stop the service and exit.
    svc -dx "$app/service" "$app/service/log" 2>/dev/null || true
fi

# -- serial-starter integration -----------------------------------------------------------------
tpl=$ROOT/opt/victronenergy/service-templates/$NAME
rules=$ROOT/etc/udev/rules.d/zz-$NAME.rules
confd=$ROOT/data/conf/serial-starter.d/$NAME.conf
if [ -e "$tpl" ] || [ -e "$rules" ] || [ -e "$confd" ]; then
    if on_device && [ -x /opt/victronenergy/swupdate-scripts/remount-rw.sh ]; then
        /opt/victronenergy/swupdate-scripts/remount-rw.sh >/dev/null 2>&1 || true
    fi
    [ -n "$TTY" ] && [ -x "$ss/stop-tty.sh" ] && "$ss/stop-tty.sh" "$TTY" || true
    if on_device && command -v svc >/dev/null 2>&1; then
        for s in /service/"$NAME".*; do
            [ -d "$s" ] && svc -dx "$s" "$s/log" 2>/dev/null || true
        done
    fi
    rm -rf "$tpl" "$rules" "$confd"
    on_device && command -v udevadm >/dev/null 2>&1 && udevadm control --reload-rules || true
    say "removed the serial-starter template, its configuration and the udev rule"
fi
# The port goes back to serial-starter's normal probing.
if [ -n "$TTY" ] && [ -x "$ss/start-tty.sh" ]; then
    "$ss/start-tty.sh" "$TTY" && say "serial-starter owns $TTY again" || true
fi

# -- /data/rc.local -----------------------------------------------------------------------------
rc=$ROOT/data/rc.local
begin="# >>> $NAME >>>"
end="# <<< $NAME <<<"
if [ -f "$rc" ] && grep -qxF "$begin" "$rc"; then
    grep -qxF "$end" "$rc" || die "$rc has '$begin' without '$end': fix it by hand"
    awk -v begin="$begin" -v end="$end" '
        $0 == begin { skip = 1; next }
        skip && $0 == end { skip = 0; next }
        !skip { print }' "$rc" >"$rc.$NAME.new"
    cat "$rc.$NAME.new" >"$rc"
    rm -f "$rc.$NAME.new"
    say "removed the $NAME lines from $rc"
fi

# -- files --------------------------------------------------------------------------------------
if [ "$PURGE" = 1 ]; then
    rm -rf "$app" "$ROOT/var/log/$NAME"
    say "deleted $app and its logs"
else
    rm -rf "$app/lib" "$app/service" "$app/serial-starter" "$app/boot.sh" "$app/VERSION" \
        "$app/README.md" "$app/mbclient.conf.example" "$app/uninstall.sh"
    say "kept $app (configuration); delete it with: rm -r $app"
fi
