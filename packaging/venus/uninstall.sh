#!/bin/sh
# Remove mbclient from a GX device: stops the service, removes the /service link, the
# /data/rc.local lines and the serial-starter integration, gives the serial port back
# to serial-starter and the network back to the stock dbus-modbus-client. mbclient.conf (and a --settings file kept in /data/<name>) stay unless
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

# -- stop, and give back the port, the serial-starter rules and the stock network service ----
# boot.sh knows what it set up (the same code undoes it, so nothing is forgotten).
if [ -x "$app/boot.sh" ]; then
    "$app/boot.sh" --remove || die "$app/boot.sh --remove failed; nothing else was removed"
elif [ -L "$ROOT/service/$NAME" ]; then
    rm -f "$ROOT/service/$NAME"
    say "removed $ROOT/service/$NAME"
fi
if command -v svc >/dev/null 2>&1 && [ -d "$app/service" ]; then
    # Removing the link does not stop supervise: tell it to stop the service and exit.
    svc -dx "$app/service" "$app/service/log" 2>/dev/null || true
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
        "$app/README.md" "$app/mbclient.conf.example" "$app/uninstall.sh" "$app/stock-network.stopped"
    say "kept $app (configuration); delete it with: rm -r $app"
fi
