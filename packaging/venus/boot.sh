#!/bin/sh
# Runs at every boot from /data/rc.local (install.sh adds the call, uninstall.sh removes it).
#
# A GX keeps only /data across reboots and firmware updates: /service is a RAM disk and the
# root filesystem is replaced by an update. This script re-creates, from /data alone, what
# mbclient needs outside it: the /service link (or the serial-starter template), the claim
# on its serial port and the hand-over from the stock dbus-modbus-client. It is
# idempotent: running it twice changes nothing.
#
#   boot.sh            set everything up (at boot, and by install.sh)
#   boot.sh --remove   give everything back (uninstall.sh): the port to serial-starter,
#                      the network to the stock client; remove the link and the
#                      serial-starter files

app=$(cd "$(dirname "$0")" && pwd -P) || exit 1
name=${app##*/}
case $app in
    */data/"$name") root=${app%/data/"$name"} ;;  # "" on a GX; a temporary root in tests
    *) echo "$name boot: must live in <root>/data/$name, not $app" >&2; exit 1 ;;
esac

TTY=
PORT_OWNER=stop-tty
ADAPTER_MATCH=
STOCK_NETWORK=auto
# shellcheck disable=SC1091
[ -r "$app/mbclient.conf" ] && . "$app/mbclient.conf"
TTY=${TTY#/dev/}
case $TTY in
    *[!A-Za-z0-9_.-]*) echo "$name boot: bad TTY in $app/mbclient.conf: no port taken" >&2; TTY= ;;
esac

ss=$root/opt/victronenergy/serial-starter
tpl=$root/opt/victronenergy/service-templates/$name
confd=$root/data/conf/serial-starter.d/$name.conf
rules=$root/etc/udev/rules.d/zz-$name.rules
stock=$root/service/dbus-modbus-client  # the stock client's network instance (Modbus TCP/UDP)
stock_mark=$app/stock-network.stopped   # we stopped it: give it back when no longer wanted
say() { echo "$name boot: $*"; }

on_device() { [ -z "$root" ]; }
have() { command -v "$1" >/dev/null 2>&1; }

# Serial-starter keeps per-port state; these two scripts are its documented controls.
release_port() {  # serial-starter stops its services on the port and leaves it alone
    [ -n "$TTY" ] || return 0
    if [ -x "$ss/stop-tty.sh" ]; then
        "$ss/stop-tty.sh" "$TTY" && say "serial-starter released $TTY"
    else
        say "no $ss/stop-tty.sh (not a GX?): nothing to release"
    fi
}

give_port_back() {
    if [ -n "$TTY" ] && [ -x "$ss/start-tty.sh" ]; then
        "$ss/start-tty.sh" "$TTY" && say "serial-starter owns $TTY again"
    fi
    return 0
}

link_service() {
    [ -d "$root/service" ] || mkdir -p "$root/service"
    if [ -L "$root/service/$name" ]; then
        [ "$(readlink "$root/service/$name")" = "$app/service" ] && return 0
        rm -f "$root/service/$name"
    elif [ -e "$root/service/$name" ]; then
        say "$root/service/$name exists and is not our link: left alone"
        return 1
    fi
    ln -s "$app/service" "$root/service/$name" && say "linked $root/service/$name"
    if on_device && have svrescan; then
        svrescan  # svscan looks at /service now instead of within 5 s
    fi
}

unlink_service() {
    if [ -L "$root/service/$name" ]; then
        rm -f "$root/service/$name"
        say "removed $root/service/$name"
        have svc && svc -dx "$app/service" "$app/service/log" 2>/dev/null
    fi
    return 0
}

remount_rw() {  # the root filesystem is read-only on recent firmware
    if on_device && [ -x /opt/victronenergy/swupdate-scripts/remount-rw.sh ]; then
        /opt/victronenergy/swupdate-scripts/remount-rw.sh >/dev/null 2>&1 || true
    fi
}

# serial-starter reads /data/conf/serial-starter.d once, when it starts: a changed rule
# only takes effect after a restart of serial-starter (or a reboot).
restart_serial_starter() {
    if [ -d "$root/service/serial-starter" ] && have svc; then
        [ -n "$TTY" ] && [ -x "$ss/stop-tty.sh" ] && "$ss/stop-tty.sh" "$TTY"
        svc -t "$root/service/serial-starter" && {
            say "restarted serial-starter so that it reads its changed rules"
            return 0
        }
    fi
    say "serial-starter could not be restarted: reboot the GX for the change to take effect"
    return 1
}

serial_starter_setup() {
    if [ -z "$ADAPTER_MATCH" ] || [ -z "$TTY" ]; then
        say "PORT_OWNER=serial-starter needs TTY and ADAPTER_MATCH in $app/mbclient.conf; falling back to stop-tty"
        release_port
        link_service
        return
    fi
    unlink_service
    remount_rw
    changed=0
    # A copy, not a link: serial-starter edits its copy of the template per port.
    mkdir -p "$tpl.new/log"
    for f in run log/run; do
        sed -e "s|@NAME@|$name|g" -e "s|@APP@|$app|g" "$app/serial-starter/$f" >"$tpl.new/$f"
        chmod 755 "$tpl.new/$f"
    done
    if diff -r "$tpl.new" "$tpl" >/dev/null 2>&1; then
        rm -rf "$tpl.new"
    else
        rm -rf "$tpl"
        mv "$tpl.new" "$tpl"
        changed=1
    fi
    mkdir -p "${confd%/*}" "${rules%/*}"
    line="service $name $name"
    if [ "$(cat "$confd" 2>/dev/null)" != "$line" ]; then
        echo "$line" >"$confd"
        changed=1
    fi
    rule="ACTION==\"add\", SUBSYSTEM==\"tty\", $ADAPTER_MATCH, ENV{VE_SERVICE}=\"$name\""
    if [ "$(cat "$rules" 2>/dev/null)" != "$rule" ]; then
        echo "$rule" >"$rules"
        say "udev rule $rules: this adapter is served by $name only"
        changed=1
    fi
    [ "$changed" = 1 ] || return 0
    on_device && have udevadm && udevadm control --reload-rules
    restart_serial_starter
    # Let udev give the port its new VE_SERVICE and serial-starter look at it afresh.
    on_device && have udevadm && udevadm trigger --action=add "/sys/class/tty/$TTY"
    give_port_back
    say "serial-starter will start /service/$name.$TTY within a minute (if it does not: reboot)"
}

serial_starter_teardown() {  # remove our serial-starter files, if there are any
    [ -e "$tpl" ] || [ -e "$rules" ] || [ -e "$confd" ] || return 0
    remount_rw
    if have svc; then
        for s in "$root"/service/"$name".*; do
            [ -d "$s" ] && svc -dx "$s" "$s/log" 2>/dev/null
        done
    fi
    rm -rf "$tpl" "$rules" "$confd"
    on_device && have udevadm && udevadm control --reload-rules
    say "removed the serial-starter template, its configuration and the udev rule"
    restart_serial_starter
}

# The stock dbus-modbus-client runs a network instance (/service/dbus-modbus-client, the
# GUI's "Modbus devices"); two clients must never poll the same devices or publish the same
# service twice. /service is rebuilt at every boot, so this runs at every boot.
stock_network_wanted_off() {
    case $STOCK_NETWORK in
        stop) return 0 ;;
        keep) return 1 ;;
        *) [ -z "$TTY" ] ;;  # auto: mbclient serves the network when it has no serial port
    esac
}

stop_stock_network() {
    [ -d "$stock" ] || return 0  # no stock client here (not a GX)
    [ -e "$stock/down" ] && [ -e "$stock_mark" ] && return 0
    touch "$stock/down"  # supervise leaves it down, even if svscan restarts
    have svc && svc -d "$stock"
    touch "$stock_mark"
    say "stopped the stock dbus-modbus-client network service: $name serves the network"
}

give_stock_network_back() {
    [ -e "$stock_mark" ] || return 0
    rm -f "$stock_mark"
    [ -d "$stock" ] || return 0
    rm -f "$stock/down"
    have svc && svc -u "$stock"
    say "the stock dbus-modbus-client network service runs again"
}

if [ "${1:-}" = --remove ]; then
    unlink_service
    serial_starter_teardown
    give_port_back
    give_stock_network_back
    exit 0
fi

# The stock network client first: it must be down before mbclient's service can start.
if stock_network_wanted_off; then
    stop_stock_network
else
    give_stock_network_back
fi
case $PORT_OWNER in
    serial-starter) serial_starter_setup ;;
    stop-tty)
        serial_starter_teardown  # switched from serial-starter mode
        release_port
        link_service
        ;;
    *)
        say "unknown PORT_OWNER=$PORT_OWNER in $app/mbclient.conf (stop-tty or serial-starter)"
        exit 2
        ;;
esac
exit 0
