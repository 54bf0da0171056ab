#!/bin/sh
# Install (or upgrade) mbclient on a Venus OS GX device, from the unpacked bundle:
#
#   tar -xzf mbclient-venus-<version>.tar.gz -C /tmp
#   /tmp/mbclient-venus-<version>/install.sh --tty ttyUSB0 --devices "1:growatt_min 2:sdm230"
#
# What it does (and nothing else):
#   * copies the program and its vendored libraries to /data/<name> (the only place a
#     firmware update keeps); an existing mbclient.conf is kept, only keys given as
#     options are changed;
#   * creates the daemontools service /data/<name>/service (run + log/run, logs in
#     /var/log/<name>) and links it into /service;
#   * adds three lines to /data/rc.local (created if missing, other content untouched)
#     that re-create the link and the serial-port claim after every reboot and firmware
#     update;
#   * takes the serial port from serial-starter for that one port (see --port-owner).
# Undo with /data/<name>/uninstall.sh.
set -eu

usage() {
    cat <<EOF
usage: install.sh [options]
  --tty NAME            serial port (name under /dev), e.g. ttyUSB0
  --baud N              baud rate (default 9600)
  --mode rtu|ascii      serial framing (default rtu)
  --devices LIST        devices, e.g. "1:growatt_min 2:sdm230" (unit:model on --tty) or
                        full specs such as tcp:192.168.1.50:502:1
  --port-owner MODE     how mbclient gets the port from Victron's serial-starter:
                          stop-tty (default): at boot, stop-tty.sh <tty> makes serial-starter
                            leave that one port alone and our own service runs on it;
                          serial-starter: serial-starter starts mbclient itself when that
                            adapter appears (template + udev rule for that adapter only)
  --adapter-match RULE  serial-starter mode: udev match of the adapter, e.g.
                        'ENV{ID_PATH}=="platform-xhci-hcd.0.auto-usb-0:1.1:1.0"'
                        (default: the ID_PATH of --tty, read with udevadm)
  --metrics-port PORT   serve Prometheus /metrics on PORT
  --name NAME           service name (default mbclient): /data/NAME, /service/NAME, /var/log/NAME
  --root DIR            install below DIR instead of / (image building, tests; also \$DESTDIR)
  --no-start            install the service down (start later: svc -u /service/NAME)
EOF
}

die() { echo "install.sh: $*" >&2; exit 2; }
say() { echo "$*"; }

here=$(cd "$(dirname "$0")" && pwd -P)
ROOT=${DESTDIR:-}
NAME=mbclient
START=1
set_keys=""  # "KEY=value" lines to write into mbclient.conf

want() {  # remember a configuration key given on the command line
    set_keys="$set_keys$1=$2
"
}

while [ $# -gt 0 ]; do
    opt=$1
    case $opt in
        --*=*) val=${opt#*=}; opt=${opt%%=*}; shift; set -- "$opt" "$val" "$@" ;;
    esac
    case $1 in
        -h|--help) usage; exit 0 ;;
        --no-start) START=0; shift; continue ;;
    esac
    [ $# -ge 2 ] || die "option $1 needs a value"
    case $1 in
        --root) ROOT=$2 ;;
        --name) NAME=$2 ;;
        --tty) want TTY "${2#/dev/}" ;;
        --baud)
            case $2 in *[!0-9]*|'') die "bad baud rate '$2'" ;; esac
            want BAUD "$2" ;;
        --mode)
            case $2 in rtu|ascii) ;; *) die "--mode is rtu or ascii, not '$2'" ;; esac
            want MODE "$2" ;;
        --devices)
            case $2 in *[!A-Za-z0-9:._,/\ \[\]-]*) die "bad --devices '$2'" ;; esac
            want DEVICES "\"$2\"" ;;
        --port-owner)
            case $2 in stop-tty|serial-starter) ;; *) die "--port-owner is stop-tty or serial-starter, not '$2'" ;; esac
            want PORT_OWNER "$2" ;;
        --adapter-match)
            case $2 in *\'*|*'$'*|*'`'*) die "bad --adapter-match (no quotes, \$ or backquotes)" ;; esac
            want ADAPTER_MATCH "'$2'" ;;
        --metrics-port)
            case $2 in *[!0-9]*|'') die "bad metrics port '$2'" ;; esac
            want METRICS_PORT "$2" ;;
        *) die "unknown option $1 (see --help)" ;;
    esac
    shift 2
done

case $NAME in
    ''|*[!A-Za-z0-9_-]*) die "bad --name '$NAME' (letters, digits, _ and - only)" ;;
esac
case $ROOT in
    ''|/*) ;;
    *) ROOT=$(cd "$ROOT" && pwd -P) || die "no such directory: $ROOT" ;;
esac
ROOT=${ROOT%/}

[ -d "$here/lib/mbclient" ] || die "run me from the unpacked bundle (no lib/mbclient next to $0)"
on_device() { [ -z "$ROOT" ]; }
if on_device && [ "$(id -u)" != 0 ]; then
    die "run as root (the GX's default login)"
fi

app=$ROOT/data/$NAME     # where the files go
target=/data/$NAME       # the same place as the device will see it
version=$(cat "$here/VERSION" 2>/dev/null || echo unknown)

# -- Python ---------------------------------------------------------------------------------
PYTHON=${PYTHON:-python3}
if [ -r "$app/mbclient.conf" ]; then
    conf_python=$(sed -n 's/^PYTHON=//p' "$app/mbclient.conf" | tail -n 1 | tr -d "\"'")
    [ -n "$conf_python" ] && PYTHON=$conf_python
fi
# shellcheck disable=SC2086
if ! pyver=$($PYTHON -c 'import sys; print("%d.%d" % sys.version_info[:2]); sys.exit(sys.version_info < (3, 11))' 2>/dev/null); then
    if on_device; then
        die "mbclient needs python3 >= 3.11; this firmware has ${pyver:-no python3}. Update Venus OS first."
    fi
    say "warning: $PYTHON is not a Python >= 3.11 here (${pyver:-missing}); installing anyway (--root)"
    pyver=
fi

# -- files ----------------------------------------------------------------------------------
say "installing mbclient $version into $app"
if on_device && [ -L "/service/$NAME" ] && command -v svc >/dev/null 2>&1; then
    svc -d "/service/$NAME" || true  # never replace files under a running process
fi

mkdir -p "$app" "$app/service/log" "$app/serial-starter/log"
rm -rf "$app/lib.new" "$app/lib.old"
cp -R "$here/lib" "$app/lib.new"
[ -d "$app/lib" ] && mv "$app/lib" "$app/lib.old"
mv "$app/lib.new" "$app/lib"
rm -rf "$app/lib.old"

install_file() {  # install_file SRC DEST MODE: atomic replace, with @NAME@ filled in
    sed -e "s|@NAME@|$NAME|g" "$1" >"$2.new"
    chmod "$3" "$2.new"
    mv -f "$2.new" "$2"
}
# The service directory is updated file by file: supervise keeps its state in
# service/supervise, and a user's service/down (autostart off) must survive upgrades.
install_file "$here/service/run" "$app/service/run" 755
install_file "$here/service/log/run" "$app/service/log/run" 755
cp "$here/serial-starter/run" "$app/serial-starter/run"
cp "$here/serial-starter/log/run" "$app/serial-starter/log/run"
for f in boot.sh uninstall.sh; do  # no @NAME@ filling: they work the name out themselves
    cp "$here/$f" "$app/$f.new"
    chmod 755 "$app/$f.new"
    mv -f "$app/$f.new" "$app/$f"
done
install_file "$here/mbclient.conf.example" "$app/mbclient.conf.example" 644
for f in VERSION README.md; do
    [ -f "$here/$f" ] && cp "$here/$f" "$app/$f"
done

# -- configuration ----------------------------------------------------------------------------
conf=$app/mbclient.conf
if [ ! -f "$conf" ]; then
    cp "$app/mbclient.conf.example" "$conf"
    say "created $conf (edit it to match your devices)"
fi
set_conf() {  # set_conf KEY VALUE: change one key in place, keep every other line
    if grep -q "^$1=" "$conf"; then
        tmp=$conf.new
        awk -v k="$1" -v v="$2" 'index($0, k "=") == 1 && !done { print k "=" v; done = 1; next } { print }' "$conf" >"$tmp"
        cat "$tmp" >"$conf"
        rm -f "$tmp"
    else
        printf '%s=%s\n' "$1" "$2" >>"$conf"
    fi
}
printf '%s' "$set_keys" | while IFS= read -r kv; do
    [ -n "$kv" ] && set_conf "${kv%%=*}" "${kv#*=}"
done

# shellcheck disable=SC1090
TTY= PORT_OWNER=stop-tty ADAPTER_MATCH=
. "$conf"
if [ "$PORT_OWNER" = serial-starter ] && [ -z "$ADAPTER_MATCH" ]; then
    if on_device && [ -n "$TTY" ] && command -v udevadm >/dev/null 2>&1; then
        idpath=$(udevadm info --query=property --name="/dev/$TTY" 2>/dev/null | sed -n 's/^ID_PATH=//p')
        [ -n "$idpath" ] || die "cannot read ID_PATH of /dev/$TTY; give --adapter-match"
        set_conf ADAPTER_MATCH "'ENV{ID_PATH}==\"$idpath\"'"
        say "serial-starter mode: the adapter is the one in USB socket $idpath"
    else
        die "--port-owner serial-starter needs --adapter-match (or run on the GX with the adapter plugged in)"
    fi
fi

if [ -n "$pyver" ]; then
    # Byte-compile once for this firmware's Python: faster starts, no writes at run time.
    # shellcheck disable=SC2086
    $PYTHON -m compileall -q "$app/lib" >/dev/null 2>&1 || say "warning: byte-compiling failed (harmless)"
fi

# -- autostart ----------------------------------------------------------------------------------
# service/down keeps supervise from starting it (at boot too) until: svc -u /service/NAME
if [ "$START" = 0 ]; then
    touch "$app/service/down"
else
    rm -f "$app/service/down"
fi

rc=$ROOT/data/rc.local
begin="# >>> $NAME >>>"
end="# <<< $NAME <<<"
block="$begin
# Re-links the $NAME service after a reboot or firmware update ($target/uninstall.sh removes this).
[ -x $target/boot.sh ] && $target/boot.sh
$end"
if [ ! -e "$rc" ]; then
    printf '#!/bin/sh\n\n%s\n' "$block" >"$rc"
    chmod 755 "$rc"
    say "created $rc"
else
    n_begin=$(grep -cxF "$begin" "$rc" || true)
    n_end=$(grep -cxF "$end" "$rc" || true)
    [ "$n_begin" = "$n_end" ] && [ "$n_begin" -le 1 ] || die "$rc has an unbalanced '$begin' block: fix it by hand"
    # Replace our block (or add it), before a final 'exit' line if there is one, so that
    # it actually runs; every other line stays exactly as it was.
    # (the block travels in the environment: awk -v would mangle its newlines on some awks)
    BLOCK=$block awk -v begin="$begin" -v end="$end" '
        $0 == begin { skip = 1; next }
        skip && $0 == end { skip = 0; next }
        skip { next }
        { line[++n] = $0 }
        END {
            last = n
            while (last > 0 && line[last] ~ /^[ \t]*$/) last--
            at = (last > 0 && line[last] ~ /^[ \t]*exit([ \t;]|$)/) ? last : n + 1
            for (i = 1; i < at; i++) print line[i]
            print ENVIRON["BLOCK"]
            for (i = at; i <= n; i++) print line[i]
        }' "$rc" >"$rc.$NAME.new"
    cat "$rc.$NAME.new" >"$rc"  # same file, same owner and mode
    rm -f "$rc.$NAME.new"
    [ -x "$rc" ] || say "warning: $rc is not executable, so Venus OS will not run it at boot (chmod +x $rc)"
    say "updated $rc"
fi

# Now, rather than at the next boot.
"$app/boot.sh"
if on_device && [ "$START" = 1 ] && [ -L "/service/$NAME" ] && command -v svc >/dev/null 2>&1; then
    svc -u "/service/$NAME" 2>/dev/null || true  # an upgrade: we stopped it above
fi

cat <<EOF

mbclient $version installed in $target.
  configuration: $target/mbclient.conf   (then: svc -t /service/$NAME)
  log:           tail -F /var/log/$NAME/current | tai64nlocal
  status:        svstat /service/$NAME
  remove:        $target/uninstall.sh [--purge]

The serial port ($PORT_OWNER mode): Victron's serial-starter probes every USB serial adapter
for VE.Direct, GPS and Modbus devices, and would fight mbclient for the RS-485 line.
Two ways to own that one port, never disabling serial-starter as a whole:
  stop-tty        at every boot $target/boot.sh runs
                  /opt/victronenergy/serial-starter/stop-tty.sh <tty>; serial-starter leaves
                  that port alone and the $NAME service runs on it (the default).
  serial-starter  a service template and a udev rule for that adapter only: serial-starter
                  starts mbclient itself whenever the adapter appears (hot-plug friendly).
                  install.sh --port-owner serial-starter
EOF
