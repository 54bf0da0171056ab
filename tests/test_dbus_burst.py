"""Bursts of signals never cost the connection, and a slow consumer ends up with the truth.

Unpatched dbus-fast 5.2.0 usually drops its connection within a few hundred ItemsChanged
of 50 paths sent one per loop turn (EAGAIN on a full socket is treated as fatal; see
``mbclient/dbus/bus.py`` and ``scripts/bench_dbus.py``). These tests push thousands.
"""

from __future__ import annotations

import asyncio
import json

import pytest
from dbus_fast import Message, Variant
from fixtures_dbus import start_peer

from mbclient.dbus.bus import connect_bus
from mbclient.dbus.service import ServiceExport
from mbclient.items import ItemStore

pytestmark = pytest.mark.asyncio

NAME = "com.victronenergy.grid.burst_1"
PATHS = [f"/Ac/L{k % 3 + 1}/Burst{k}" for k in range(50)]


async def collect(peer: asyncio.subprocess.Process) -> list[dict]:
    out, err = await asyncio.wait_for(peer.communicate(), 90)
    assert peer.returncode == 0, err.decode()
    return [json.loads(line) for line in out.decode().splitlines()]


async def test_thousands_of_flushes_with_a_slow_reader(dbus_address: str) -> None:
    store = ItemStore()
    store.add("/DeviceInstance", 40)
    for p in PATHS:
        store.add(p, 0.0)
    store.add("/Done", 0)
    store.flush()
    export = ServiceExport(store, dbus_address)
    await export.start(NAME)
    peer = await start_peer("listen", dbus_address, NAME, "/Done", "--delay", "0.001")
    assert (await asyncio.wait_for(peer.stdout.readline(), 30)).strip() == b"READY"
    try:
        flushes = 5000
        for i in range(flushes):
            # a different handful of paths every cycle, so merged batches must keep them all
            store.update({PATHS[(i * 7 + j) % len(PATHS)]: float(i) + j / 10 for j in range(5)})
            store.flush()
            if i % 4 == 0:
                await asyncio.sleep(0)  # a poller yields between cycles; sometimes it does not
        store["/Done"] = 1
        store.flush()
        lines = await collect(peer)
        assert export.connected
        seen: dict[str, list] = {}
        for line in lines:
            assert line["member"] == "ItemsChanged"
            for path, props in line["body"].items():
                seen[path] = props["Value"]
        expected = {p: ["d", store[p]] for p in PATHS} | {"/Done": ["i", 1]}
        assert seen == expected
        assert 1 < len(lines) <= flushes + 1 and export.signals_sent == len(lines)
        # and the service still answers
        client = await connect_bus(dbus_address)
        reply = await client.call(
            Message(destination=NAME, path="/", interface="com.victronenergy.BusItem", member="GetItems")
        )
        assert reply.body[0]["/Done"]["Value"] == Variant("i", 1)
        client.disconnect()
    finally:
        if peer.returncode is None:
            peer.kill()
            await peer.wait()
        await export.stop()


async def test_raw_signal_burst_survives_a_full_socket(dbus_address: str) -> None:
    """No coalescing here: every signal goes to the socket, one per event-loop turn."""
    bus = await connect_bus(dbus_address)
    name = "com.victronenergy.grid.burst_raw"
    await bus.request_name(name)
    peer = await start_peer("listen", dbus_address, name, "/Done")
    assert (await asyncio.wait_for(peer.stdout.readline(), 30)).strip() == b"READY"
    try:
        count = 2000
        futures = []
        for i in range(count):
            body = {p: {"Value": Variant("d", float(i)), "Text": Variant("s", str(i))} for p in PATHS}
            if i == count - 1:
                body["/Done"] = {"Value": Variant("i", 1), "Text": Variant("s", "1")}
            futures.append(bus.send(Message.new_signal("/", "com.victronenergy.BusItem", "ItemsChanged", "a{sa{sv}}", [body])))
            await asyncio.sleep(0)
        await asyncio.wait_for(asyncio.gather(*futures), 60)
        assert bus.connected
        lines = await collect(peer)
        assert [line["body"][PATHS[0]]["Value"][1] for line in lines] == [float(i) for i in range(count)]
    finally:
        if peer.returncode is None:
            peer.kill()
            await peer.wait()
        bus.disconnect()
