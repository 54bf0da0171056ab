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
#     that re-create the link, the serial-port claim and the stock client's hand-over
#     after every reboot and firmware update;
#   * takes the serial port (if any) from serial-starter for that one port (see
#     --port-owner), and hands the network over from the stock dbus-modbus-client when
#     mbclient serves it (see --stock-network).
# It fails closed: every option and the resulting configuration are checked first; a run
# that fails leaves the previous installation as it was, and running.
# Undo with /data/<name>/uninstall.sh.
set -eu

usage() {
    cat <<EOF
usage: install.sh [options]
  --tty NAME            serial port (name under /dev), e.g. ttyUSB0; --tty '' for none
                        (network devices only: no serial port is taken)
  --baud N              baud rate of the --devices units on --tty (default 9600): 1200 2400
                        4800 9600 14400 19200 38400 57600 115200 230400
  --scan-rates LIST     rates a scan of --tty tries, in order, e.g. "9600 38400"
                        (default: every supported model's factory rate, 9600 first)
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
  --stock-network MODE  the stock dbus-modbus-client's network service (GUI: Modbus devices):
                          auto (default): stopped while mbclient serves the network
                            (no --tty), left running otherwise;
                          stop: always stopped; keep: never touched
  --metrics-port PORT   serve Prometheus /metrics on PORT
  --name NAME           service name (default mbclient): /data/NAME, /service/NAME, /var/log/NAME
  --root DIR            install below DIR instead of / (image building, tests; also \$DESTDIR)
  --no-start            install the service down (start later: svc -u /service/NAME)
EOF
}

die() { echo "install.sh: $*" >&2; exit 2; }
say() { echo "$*"; }

here=$(cd "$(dirname "$0")" && pwd -P)
PYTHON_ENV=${PYTHON:-}  # the caller's choice; the configuration below also sets PYTHON
ROOT=${DESTDIR:-}
NAME=mbclient
START=1
set_keys=""  # "KEY=value" lines to write into mbclient.conf (values already validated)

want() {  # remember a configuration key given on the command line
    set_keys="$set_keys$1=$2
"
}

# -- validation (shared with the effective configuration below) -----------------------------------
BAUDS="1200 2400 4800 9600 14400 19200 38400 57600 115200 230400"
check_tty() {  # a device name under /dev (no path, no shell or spec syntax); empty = none
    case $1 in
        '') return 0 ;;
        [!A-Za-z0-9]*|*[!A-Za-z0-9_.-]*) return 1 ;;
    esac
}
check_baud() {
    for b in $BAUDS; do [ "$1" = "$b" ] && return 0; done
    return 1
}
check_rates() {  # baud rates, comma or space separated; empty = the models' own rates
    case $1 in *[!0-9,\ ]*) return 1 ;; esac
    for r in $(echo "$1" | tr ',' ' '); do check_baud "$r" || return 1; done
}
check_devices() {  # "unit[:model]" entries or full specs, comma or space separated
    case $1 in *[!A-Za-z0-9:._,/\ \[\]-]*) return 1 ;; esac
    for d in $(echo "$1" | tr ',' ' '); do
        case $d in
            *:*:*:*) ;;  # a full spec: mbclient checks it (one clear line) when it starts
            *)
                unit=${d%%:*}
                case $unit in ''|*[!0-9]*) return 1 ;; esac
                [ "$unit" -ge 1 ] && [ "$unit" -le 247 ] || return 1
                ;;
        esac
    done
}
check_port() {
    case $1 in ''|*[!0-9]*) return 1 ;; esac
    [ ${#1} -le 5 ] && [ "$1" -ge 1 ] && [ "$1" -le 65535 ]
}
check_match() {  # written single-quoted and into a udev rule: no quotes, $, `, \ or newlines
    case $1 in *\'*|*'$'*|*'`'*|*\\*) return 1 ;; esac
    [ "$(printf '%s' "$1" | wc -l)" -eq 0 ]
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
        --tty)
            v=${2#/dev/}
            check_tty "$v" || die "bad --tty '$2' (a device name such as ttyUSB0)"
            want TTY "'$v'" ;;
        --baud)
            check_baud "$2" || die "bad --baud '$2' (one of $BAUDS)"
            want BAUD "$2" ;;
        --scan-rates)
            check_rates "$2" || die "bad --scan-rates '$2' (each one of $BAUDS)"
            want SCAN_RATES "'$2'" ;;
        --mode)
            case $2 in rtu|ascii) ;; *) die "--mode is rtu or ascii, not '$2'" ;; esac
            want MODE "$2" ;;
        --devices)
            check_devices "$2" || die "bad --devices '$2' (unit[:model] with unit 1..247, or full specs)"
            want DEVICES "'$2'" ;;
        --port-owner)
            case $2 in stop-tty|serial-starter) ;; *) die "--port-owner is stop-tty or serial-starter, not '$2'" ;; esac
            want PORT_OWNER "$2" ;;
        --adapter-match)
            check_match "$2" || die "bad --adapter-match (no quotes, \$, backquotes, backslashes or newlines)"
            want ADAPTER_MATCH "'$2'" ;;
        --stock-network)
            case $2 in auto|stop|keep) ;; *) die "--stock-network is auto, stop or keep, not '$2'" ;; esac
            want STOCK_NETWORK "$2" ;;
        --metrics-port)
            check_port "$2" || die "bad --metrics-port '$2' (1..65535)"
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
    *) ROOT=$(cd "$ROOT" 2>/dev/null && pwd -P) || die "no such directory: --root" ;;
esac
ROOT=${ROOT%/}
[ -z "$ROOT" ] || [ -d "$ROOT" ] || die "no such directory: $ROOT"

[ -d "$here/lib/mbclient" ] || die "run me from the unpacked bundle (no lib/mbclient next to $0)"
on_device() { [ -z "$ROOT" ]; }
if on_device && [ "$(id -u)" != 0 ]; then
    die "run as root (the GX's default login)"
fi

app=$ROOT/data/$NAME     # where the files go
target=/data/$NAME       # the same place as the device will see it
version=$(cat "$here/VERSION" 2>/dev/null || echo unknown)
conf=$app/mbclient.conf
rc=$ROOT/data/rc.local
begin="# >>> $NAME >>>"
end="# <<< $NAME <<<"

# Scratch space outside the installation; removed whatever happens.
work=$(mktemp -d "${TMPDIR:-/tmp}/mbclient-install.XXXXXX") || die "cannot create a temporary directory"
stopped=0
cleanup() {
    status=$?
    rm -rf "$work" "$app/lib.new"
    if [ "$status" != 0 ] && [ "$stopped" = 1 ]; then
        # We stopped the running service and then failed: start the previous one again.
        svc -u "$ROOT/service/$NAME" 2>/dev/null || true
        echo "install.sh: failed after stopping the service; it was started again" >&2
    fi
    exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT TERM HUP

# -- the configuration as it will be, checked before anything changes ---------------------------
if [ -f "$conf" ]; then
    cp "$conf" "$work/mbclient.conf"
else
    sed -e "s|@NAME@|$NAME|g" "$here/mbclient.conf.example" >"$work/mbclient.conf"
fi
set_conf() {  # set_conf FILE KEY VALUE: change one key in place, keep every other line
    if grep -q "^$2=" "$1"; then
        K=$2 V=$3 awk 'index($0, ENVIRON["K"] "=") == 1 && !done { print ENVIRON["K"] "=" ENVIRON["V"]; done = 1; next } { print }' \
            "$1" >"$1.tmp"
        cat "$1.tmp" >"$1"
        rm -f "$1.tmp"
    else
        printf '%s=%s\n' "$2" "$3" >>"$1"
    fi
}
printf '%s' "$set_keys" >"$work/keys"
while IFS= read -r kv; do
    [ -n "$kv" ] && set_conf "$work/mbclient.conf" "${kv%%=*}" "${kv#*=}"
done <"$work/keys"

effective() {  # the configuration's values, as service/run and boot.sh will see them
    TTY= BAUD=9600 SCAN_RATES= MODE=rtu DEVICES= PORT_OWNER=stop-tty ADAPTER_MATCH= STOCK_NETWORK=auto METRICS_PORT=
    # shellcheck disable=SC1090,SC1091
    . "$work/mbclient.conf"
    TTY=${TTY#/dev/}
}
( effective ) >/dev/null 2>&1 || die "$conf is not a valid shell fragment: fix it by hand"
effective
problem=
check_tty "$TTY" || problem="bad TTY '$TTY'"
check_baud "$BAUD" || problem="bad BAUD '$BAUD' (one of $BAUDS)"
check_rates "$SCAN_RATES" || problem="bad SCAN_RATES '$SCAN_RATES' (each one of $BAUDS)"
case $MODE in rtu|ascii) ;; *) problem="bad MODE '$MODE' (rtu or ascii)" ;; esac
check_devices "$DEVICES" || problem="bad DEVICES '$DEVICES'"
[ -z "$METRICS_PORT" ] || check_port "$METRICS_PORT" || problem="bad METRICS_PORT '$METRICS_PORT'"
case $STOCK_NETWORK in auto|stop|keep) ;; *) problem="bad STOCK_NETWORK '$STOCK_NETWORK' (auto, stop or keep)" ;; esac
[ -z "$ADAPTER_MATCH" ] || check_match "$ADAPTER_MATCH" || problem="bad ADAPTER_MATCH"
if [ -z "$TTY" ]; then
    for d in $(echo "$DEVICES" | tr ',' ' '); do
        case $d in *:*:*:*) ;; *) problem="device '$d' names no port: give --tty or a full spec" ;; esac
    done
fi
case $PORT_OWNER in
    stop-tty) ;;
    serial-starter)
        [ -n "$TTY" ] || problem="--port-owner serial-starter needs --tty"
        if [ -z "$problem" ] && [ -z "$ADAPTER_MATCH" ]; then
            if on_device && command -v udevadm >/dev/null 2>&1; then
                idpath=$(udevadm info --query=property --name="/dev/$TTY" 2>/dev/null | sed -n 's/^ID_PATH=//p')
                if [ -z "$idpath" ]; then
                    problem="cannot read ID_PATH of /dev/$TTY (is the adapter plugged in?); give --adapter-match"
                else
                    ADAPTER_MATCH="ENV{ID_PATH}==\"$idpath\""
                    check_match "$ADAPTER_MATCH" || problem="unusable ID_PATH of /dev/$TTY; give --adapter-match"
                    set_conf "$work/mbclient.conf" ADAPTER_MATCH "'$ADAPTER_MATCH'"
                    say "serial-starter mode: the adapter is the one in USB socket $idpath"
                fi
            else
                problem="--port-owner serial-starter needs --adapter-match (or run on the GX with the adapter plugged in)"
            fi
        fi
        ;;
    *) problem="bad PORT_OWNER '$PORT_OWNER' (stop-tty or serial-starter)" ;;
esac
[ -z "$problem" ] || die "$problem; nothing was changed"

if [ -e "$rc" ]; then
    n_begin=$(grep -cxF "$begin" "$rc" || true)
    n_end=$(grep -cxF "$end" "$rc" || true)
    [ "$n_begin" = "$n_end" ] && [ "$n_begin" -le 1 ] || die "$rc has an unbalanced '$begin' block: fix it by hand; nothing was changed"
fi
if [ -e "$ROOT/service/$NAME" ] && ! [ -L "$ROOT/service/$NAME" ]; then
    die "$ROOT/service/$NAME exists and is not mbclient's link: remove it first; nothing was changed"
fi

# -- Python ---------------------------------------------------------------------------------
PYTHON=${PYTHON_ENV:-python3}
if [ -r "$conf" ]; then  # an installed configuration names its interpreter
    conf_python=$(sed -n 's/^PYTHON=//p' "$conf" | tail -n 1 | tr -d "\"'")
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

# -- staging: everything new is prepared while the old installation keeps running ----------
say "installing mbclient $version into $app"
mkdir -p "$app"
rm -rf "$app/lib.new" "$app/lib.old"
cp -R "$here/lib" "$app/lib.new"
if [ -n "$pyver" ]; then
    # Byte-compile once for this firmware's Python: faster starts, no writes at run time.
    # shellcheck disable=SC2086
    $PYTHON -m compileall -q -d "$target/lib" "$app/lib.new" >/dev/null 2>&1 || say "warning: byte-compiling failed (harmless)"
fi

# -- from here on files change ---------------------------------------------------------------
if [ -L "$ROOT/service/$NAME" ] && command -v svc >/dev/null 2>&1; then
    svc -d "$ROOT/service/$NAME" 2>/dev/null && stopped=1  # never replace files under a running process
fi

mkdir -p "$app/service/log" "$app/serial-starter/log"
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
if [ ! -f "$conf" ]; then
    cp "$work/mbclient.conf" "$conf.new"
    mv -f "$conf.new" "$conf"
    say "created $conf (edit it to match your devices)"
elif ! cmp -s "$work/mbclient.conf" "$conf"; then
    cat "$work/mbclient.conf" >"$conf"  # same file, same owner and mode
    say "updated $conf"
fi

# -- autostart ----------------------------------------------------------------------------------
# service/down keeps supervise from starting it (at boot too) until: svc -u /service/NAME
if [ "$START" = 0 ]; then
    touch "$app/service/down"
else
    rm -f "$app/service/down"
fi

block="$begin
# Re-links the $NAME service after a reboot or firmware update ($target/uninstall.sh removes this).
[ -x $target/boot.sh ] && $target/boot.sh
$end"
if [ ! -e "$rc" ]; then
    printf '#!/bin/sh\n\n%s\n' "$block" >"$rc"
    chmod 755 "$rc"
    say "created $rc"
else
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
        }' "$rc" >"$work/rc.local"
    if ! cmp -s "$work/rc.local" "$rc"; then
        cat "$work/rc.local" >"$rc"  # same file, same owner and mode
        say "updated $rc"
    fi
    [ -x "$rc" ] || say "warning: $rc is not executable, so Venus OS will not run it at boot (chmod +x $rc)"
fi

# Now, rather than at the next boot.
"$app/boot.sh"
stopped=0
if [ "$START" = 1 ] && [ -L "$ROOT/service/$NAME" ] && command -v svc >/dev/null 2>&1; then
    svc -u "$ROOT/service/$NAME" 2>/dev/null || true  # an upgrade: we stopped it above
fi

cat <<EOF

mbclient $version installed in $target.
  configuration: $target/mbclient.conf   (then: svc -t /service/$NAME)
  log:           tail -F /var/log/$NAME/current | tai64nlocal
  status:        svstat /service/$NAME
  remove:        $target/uninstall.sh [--purge]
EOF
if [ -z "$TTY" ]; then
    cat <<EOF

No serial port: mbclient takes no port from serial-starter and runs the network devices.
EOF
    if [ "$STOCK_NETWORK" = keep ]; then
        cat <<EOF
warning: STOCK_NETWORK=keep: the stock dbus-modbus-client keeps running and follows the same
  saved device list as mbclient; a device both know is polled and published twice.
EOF
    fi
else
    cat <<EOF

The serial port $TTY ($PORT_OWNER mode): Victron's serial-starter probes every USB serial
adapter for VE.Direct, GPS and Modbus devices, and would fight mbclient for the RS-485 line.
Two ways to own that one port, never disabling serial-starter as a whole:
  stop-tty        at every boot $target/boot.sh runs
                  /opt/victronenergy/serial-starter/stop-tty.sh <tty>; serial-starter leaves
                  that port alone and the $NAME service runs on it (the default).
  serial-starter  a service template and a udev rule for that adapter only: serial-starter
                  starts mbclient itself whenever the adapter appears (hot-plug friendly).
                  install.sh --port-owner serial-starter
EOF
fi
