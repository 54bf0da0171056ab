"""A D-Bus consumer built on jeepney (not dbus-fast), run as a separate process by the tests.

It plays the part of gui-v2/systemcalc/dbus-spy: a different library in a different
process, so nothing the service does in-process can make a test pass by accident.
Output is JSON on stdout; variants appear as ``[signature, value]``.

    python dbus_peer.py scan ADDRESS NAME NODE...        GetItems, per-path calls, nodes
    python dbus_peer.py listen ADDRESS NAME UNTIL_PATH [--delay S]
        prints READY once subscribed, then one JSON line per signal of NAME, and stops
        after the first ItemsChanged that carries UNTIL_PATH (reading slowly with --delay)
    python dbus_peer.py call ADDRESS NAME PATH MEMBER [SIG JSON_ARGS]  one call, interface-less
"""

from __future__ import annotations

import argparse
import json
import sys
import time

from jeepney import DBusAddress, MatchRule, MessageType, new_method_call
from jeepney.bus_messages import message_bus
from jeepney.io.blocking import open_dbus_connection
from jeepney.low_level import HeaderFields

BUSITEM = "com.victronenergy.BusItem"


def call(conn, name: str, path: str, member: str, interface: str | None = BUSITEM, sig=None, body=()):
    msg = new_method_call(DBusAddress(path, bus_name=name, interface=interface), member, sig, body)
    reply = conn.send_and_get_reply(msg, timeout=30)
    if reply.header.message_type == MessageType.error:
        return {"error": reply.header.fields.get(HeaderFields.error_name)}
    return reply.body[0] if len(reply.body) == 1 else list(reply.body)


def scan(args) -> dict:
    conn = open_dbus_connection(args.address, auth_timeout=10)
    name = args.name
    items = call(conn, name, "/", "GetItems")
    out = {"items": items, "values": {}, "texts": {}, "nointerface": {}, "nodes": {}}
    for path in items:
        out["values"][path] = call(conn, name, path, "GetValue")
        out["texts"][path] = call(conn, name, path, "GetText")
        out["nointerface"][path] = call(conn, name, path, "GetValue", interface=None)
    for node in ["/", *args.nodes]:
        out["nodes"][node] = {
            "value": call(conn, name, node, "GetValue"),
            "text": call(conn, name, node, "GetText"),
            "value_nointerface": call(conn, name, node, "GetValue", interface=None),
        }
    out["root_items_nointerface"] = sorted(call(conn, name, "/", "GetItems", interface=None))
    out["missing"] = call(conn, name, "/No/Such/Path", "GetValue")
    conn.close()
    return out


def listen(args) -> None:
    conn = open_dbus_connection(args.address, auth_timeout=10)
    owner = conn.send_and_get_reply(message_bus.GetNameOwner(args.name), timeout=30).body[0]
    rule = MatchRule(type="signal", sender=args.name, interface=BUSITEM)
    conn.send_and_get_reply(message_bus.AddMatch(rule), timeout=30)
    print("READY", flush=True)
    while True:
        msg = conn.receive()
        fields = msg.header.fields
        if msg.header.message_type != MessageType.signal or fields.get(HeaderFields.sender) != owner:
            continue
        member = fields.get(HeaderFields.member)
        print(json.dumps({"member": member, "path": fields.get(HeaderFields.path), "body": msg.body[0]}), flush=True)
        if member == "ItemsChanged" and args.until in msg.body[0]:
            break
        if args.delay:
            time.sleep(args.delay)
    conn.close()


def one_call(args) -> object:
    conn = open_dbus_connection(args.address, auth_timeout=10)
    body: tuple = ()
    if args.sig:  # ARG is the JSON list of arguments; a variant is [signature, value]
        assert all(c in "sixdvubnqty" for c in args.sig), "peer handles simple signatures only"
        values = json.loads(args.arg)
        body = tuple(tuple(v) if c == "v" else v for c, v in zip(args.sig, values, strict=True))
    result = call(conn, args.name, args.path, args.member, interface=None, sig=args.sig, body=body)
    conn.close()
    return result


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("scan")
    p.add_argument("address")
    p.add_argument("name")
    p.add_argument("nodes", nargs="*")
    p = sub.add_parser("listen")
    p.add_argument("address")
    p.add_argument("name")
    p.add_argument("until")
    p.add_argument("--delay", type=float, default=0.0)
    p = sub.add_parser("call")
    p.add_argument("address")
    p.add_argument("name")
    p.add_argument("path")
    p.add_argument("member")
    p.add_argument("sig", nargs="?")
    p.add_argument("arg", nargs="?")
    args = parser.parse_args(argv)
    if args.cmd == "scan":
        print(json.dumps(scan(args)))
    elif args.cmd == "listen":
        listen(args)
    else:
        print(json.dumps(one_call(args)))


if __name__ == "__main__":
    main(sys.argv[1:])
