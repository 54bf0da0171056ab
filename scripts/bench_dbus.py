#!/usr/bin/env python3
"""Numbers for the D-Bus layer, on a private dbus-daemon (prints, asserts nothing).

    .venv/bin/python scripts/bench_dbus.py [--signals N] [--paths P]

1. plain dbus-fast: ItemsChanged of P (and 10 P) paths, one per event-loop turn, until
   the connection drops (EAGAIN on a full socket) or N were sent ("ok"), 5 trials each;
2. the same through ``mbclient.dbus.bus.connect_bus`` (full socket tolerated);
3. ServiceExport: N flushes of a P-path store in a tight loop -> signals actually sent;
4. GetItems round trip on a 300-path service.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from dbus_fast import Message, Variant  # noqa: E402
from dbus_fast.aio import MessageBus  # noqa: E402

from mbclient.dbus.bus import connect_bus  # noqa: E402
from mbclient.dbus.daemon import start_dbus_daemon, stop_dbus_daemon  # noqa: E402
from mbclient.errors import ConfigError  # noqa: E402
from mbclient.dbus.service import ServiceExport  # noqa: E402
from mbclient.items import ItemStore  # noqa: E402

def items_changed(paths: int, i: int) -> Message:
    body = {f"/Ac/P{k}": {"Value": Variant("d", float(i)), "Text": Variant("s", str(i))} for k in range(paths)}
    return Message.new_signal("/", "com.victronenergy.BusItem", "ItemsChanged", "a{sa{sv}}", [body])


async def burst(bus: MessageBus, n: int, paths: int) -> tuple[int, float]:
    start = time.perf_counter()
    sent = 0
    futures = []
    try:
        for i in range(n):
            futures.append(bus.send(items_changed(paths, i)))
            sent += 1
            await asyncio.sleep(0)
            if not bus.connected:
                break
        async with asyncio.timeout(30):
            await asyncio.gather(*futures, return_exceptions=True)
    except Exception:
        pass
    return sent, time.perf_counter() - start


async def main(n: int, paths: int, address: str) -> None:
    logging.disable(logging.CRITICAL)  # the plain bus's dying futures would log tracebacks
    asyncio.get_running_loop().set_exception_handler(lambda loop, ctx: None)
    for size in (paths, paths * 10):
        results = []
        for _ in range(5):
            plain = await MessageBus(bus_address=address).connect()
            sent, _took = await burst(plain, n, size)
            results.append(str(sent) if not plain.connected else "ok")
            if plain.connected:
                plain.disconnect()
        print(f"plain dbus-fast : {size}-path signals, 5 trials of {n}: dropped after {', '.join(results)}")

    guarded = await connect_bus(address)
    sent, took = await burst(guarded, n, paths)
    print(f"connect_bus     : {sent} signals sent, connected={guarded.connected} ({took:.2f} s, "
          f"{sent / took:.0f} signals/s)")
    guarded.disconnect()

    store = ItemStore()
    store.add("/DeviceInstance", 40)
    for k in range(paths):
        store.add(f"/Ac/P{k}", 0.0)
    export = ServiceExport(store, address)
    await export.start("com.victronenergy.grid.bench")
    start = time.perf_counter()
    for i in range(n):
        store.update({f"/Ac/P{k}": float(i) for k in range(paths)})
        store.flush()
    await asyncio.sleep(0.5)
    print(f"ServiceExport   : {n} flushes in a tight loop -> {export.signals_sent} ItemsChanged sent, "
          f"connected={export.connected} ({time.perf_counter() - start:.2f} s)")
    for k in range(paths, 300):
        store.add(f"/Extra/P{k}", float(k))
    client = await connect_bus(address)
    msg = Message(destination="com.victronenergy.grid.bench", path="/", interface="com.victronenergy.BusItem",
                  member="GetItems")
    start = time.perf_counter()
    for _ in range(50):
        await client.call(msg)
    print(f"GetItems        : {len(store.items)} paths, {(time.perf_counter() - start) / 50 * 1000:.1f} ms per call")
    client.disconnect()
    await export.stop()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--signals", type=int, default=3000)
    parser.add_argument("--paths", type=int, default=50)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        try:
            daemon, address = start_dbus_daemon(Path(tmp))
        except ConfigError as exc:
            sys.exit(str(exc))
        try:
            asyncio.run(main(args.signals, args.paths, address))
        finally:
            stop_dbus_daemon(daemon)
