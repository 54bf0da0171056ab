#!/bin/sh
# Runs at every boot from /data/rc.local (install.sh adds the call, uninstall.sh removes it).
#
# A GX keeps only /data across reboots and firmware updates: /service is a RAM disk and the
# root filesystem is replaced by an update. This script re-creates, from /data alone, what
# mbclient needs outside it: the /service link (or the serial-starter template) and the
# claim on its serial port. It is idempotent: running it twice changes nothing.

app=$(cd "$(dirname "$0")" && pwd -P) || exit 1
name=${app##*/}
case $app in
    */data/"$name") root=${app%/data/"$name"} ;;  # "" on a GX; a temporary root in tests
    *) echo "$name boot: must live in <root>/data/$name, not $app" >&2; exit 1 ;;
esac

TTY=
PORT_OWNER=stop-tty
ADAPTER_MATCH=
# shellcheck disable=SC1091
[ -r "$app/mbclient.conf" ] && . "$app/mbclient.conf"
TTY=${TTY#/dev/}

ss=$root/opt/victronenergy/serial-starter
say() { echo "$name boot: $*"; }

on_device() { [ -z "$root" ]; }

# Serial-starter keeps per-port state; these two scripts are its documented controls.
release_port() {  # serial-starter stops its services on the port and leaves it alone
    [ -n "$TTY" ] || return 0
    if [ -x "$ss/stop-tty.sh" ]; then
        "$ss/stop-tty.sh" "$TTY" && say "serial-starter released $TTY"
    else
        say "no $ss/stop-tty.sh (not a GX?): nothing to release"
    fi
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
    if on_device && command -v svrescan >/dev/null 2>&1; then
        svrescan  # svscan looks at /service now instead of within 5 s
    fi
}

unlink_service() {
    if [ -L "$root/service/$name" ]; then
        rm -f "$root/service/$name"
        on_device && command -v svc >/dev/null 2>&1 && svc -dx "$app/service" "$app/service/log" 2>/dev/null
    fi
    return 0
}

remount_rw() {  # the root filesystem is read-only on recent firmware
    if on_device && [ -x /opt/victronenergy/swupdate-scripts/remount-rw.sh ]; then
        /opt/victronenergy/swupdate-scripts/remount-rw.sh >/dev/null 2>&1 || true
    fi
}

serial_starter_setup() {
    tpl=$root/opt/victronenergy/service-templates/$name
    confd=$root/data/conf/serial-starter.d
    rules=$root/etc/udev/rules.d/zz-$name.rules
    if [ -z "$ADAPTER_MATCH" ]; then
        say "PORT_OWNER=serial-starter needs ADAPTER_MATCH in $app/mbclient.conf; falling back to stop-tty"
        release_port
        link_service
        return
    fi
    unlink_service
    remount_rw
    # A copy, not a link: serial-starter edits its copy of the template per port.
    rm -rf "$tpl"
    mkdir -p "$tpl/log"
    for f in run log/run; do
        sed -e "s|@NAME@|$name|g" -e "s|@APP@|$app|g" "$app/serial-starter/$f" >"$tpl/$f"
        chmod 755 "$tpl/$f"
    done
    mkdir -p "$confd" "${rules%/*}"
    printf 'service %s %s\n' "$name" "$name" >"$confd/$name.conf"
    rule="ACTION==\"add\", SUBSYSTEM==\"tty\", $ADAPTER_MATCH, ENV{VE_SERVICE}=\"$name\""
    if [ "$(cat "$rules" 2>/dev/null)" != "$rule" ]; then
        echo "$rule" >"$rules"
        say "udev rule $rules: this adapter is served by $name only"
        if on_device && command -v udevadm >/dev/null 2>&1; then
            # Re-run the rules for the port and let serial-starter look at it afresh.
            udevadm control --reload-rules
            [ -x "$ss/stop-tty.sh" ] && [ -n "$TTY" ] && "$ss/stop-tty.sh" "$TTY"
            [ -n "$TTY" ] && udevadm trigger --action=add "/sys/class/tty/$TTY"
            [ -x "$ss/start-tty.sh" ] && [ -n "$TTY" ] && "$ss/start-tty.sh" "$TTY"
        fi
    fi
}

case $PORT_OWNER in
    serial-starter) serial_starter_setup ;;
    stop-tty)
        release_port
        link_service
        ;;
    *)
        say "unknown PORT_OWNER=$PORT_OWNER in $app/mbclient.conf (stop-tty or serial-starter)"
        exit 2
        ;;
esac
exit 0
