"""No live values while /Connected = 0.

A device published from memory (a GX booted at night) is probed until it answers. A probe
that gets the liveness reply and part of the first poll, and then silence again (an
inverter waking at dawn, a busy line), must not leave power on the bus beside
/Connected = 0: systemcalc and VRM would count it. What consumers see is checked signal
by signal, as a GUI follows ItemsChanged."""

from __future__ import annotations

from typing import Any

import anyio
import pytest
from dbus_fast import Message, MessageType
from test_runtime_support import BUSITEM, Observer, fast_config, running_supervisor, site_on_pty, spec_for

from mbclient.dbus import variants

pytestmark = pytest.mark.asyncio


class PublishedView:
    """The service as a consumer sees it: GetItems once, then every ItemsChanged applied."""

    def __init__(self) -> None:
        self.values: dict[str, Any] = {}
        self.violations: list[dict[str, Any]] = []
        self.signals = 0

    def apply(self, changes: dict[str, Any]) -> None:
        for path, props in changes.items():
            self.values[path] = variants.unwrap_published(props["Value"])
        self.signals += 1
        if self.values.get("/Connected") == 0 and self.values.get("/Ac/Power") not in (None, 0, 0.0):
            self.violations.append({p: self.values.get(p) for p in ("/Connected", "/Ac/Power", "/Ac/L1/Voltage")})


async def follow(observer: Observer, name: str, view: PublishedView) -> None:
    bus = observer.bus
    owner = (await bus.call(Message(destination="org.freedesktop.DBus", path="/org/freedesktop/DBus",
                                    interface="org.freedesktop.DBus", member="GetNameOwner", signature="s",
                                    body=[name]))).body[0]

    def on_message(msg: Message) -> None:
        if msg.message_type is MessageType.SIGNAL and msg.member == "ItemsChanged" and msg.sender == owner:
            view.apply(msg.body[0])

    bus.add_message_handler(on_message)
    await bus.call(Message(destination="org.freedesktop.DBus", path="/org/freedesktop/DBus",
                           interface="org.freedesktop.DBus", member="AddMatch", signature="s",
                           body=[f"type='signal',sender='{owner}',interface='{BUSITEM}',member='ItemsChanged'"]))
    reply = await bus.call(Message(destination=name, path="/", interface=BUSITEM, member="GetItems"))
    view.apply(reply.body[0])


@pytest.mark.timeout(90)
async def test_a_partial_read_of_a_remembered_device_publishes_no_live_values(dbus_address: str, tmp_path) -> None:
    async with site_on_pty(tmp_path) as (site, port):
        inverter = site.inverter
        spec = spec_for(port.path, 1, "growatt_min")
        config = fast_config(dbus_address, tmp_path / "settings.json", [spec])
        observer = await Observer.connect(dbus_address)
        try:
            async with running_supervisor(config) as sup:  # a sunny day: identified and remembered
                while sup.device(spec) is None or not sup.device(spec).published.is_set():
                    await anyio.sleep(0.02)
                name = sup.device(spec).service_name
                await observer.wait_for(name, "/Ac/Power", lambda v: v is not None and v > 0)
            await observer.wait_name(name, present=False)

            inverter.asleep = True  # night: the GX reboots
            async with running_supervisor(config):
                await observer.wait_name(name, timeout=5)
                view = PublishedView()
                await follow(observer, name, view)
                assert view.values["/Connected"] == 0 and view.values["/Ac/Power"] is None

                # Dawn, haltingly: the inverter answers the probe, the identity and the read
                # of its AC block, then falls silent again before the poll is complete.
                woken = 0
                earlier_hook = inverter.on_read

                def falls_asleep_after_the_ac_block(table: str, address: int, count: int) -> None:
                    nonlocal woken
                    if earlier_hook is not None:
                        earlier_hook(table, address, count)
                    if table == "input" and address <= 35 < address + count:
                        inverter.asleep = True  # this read is answered, the next ones are not
                        woken += 1

                inverter.on_read = falls_asleep_after_the_ac_block
                for attempt in range(1, 4):
                    inverter.asleep = False
                    with anyio.fail_after(10):
                        while woken < attempt:
                            await anyio.sleep(0.01)
                    await anyio.sleep(0.5)  # the rest of that poll times out
                    assert await observer.get(name, "/Connected") == 0
                    assert await observer.get(name, "/Ac/Power") is None
                assert view.signals > 1 and view.violations == [], view.violations

                inverter.on_read = earlier_hook  # and then it really wakes
                inverter.asleep = False
                await observer.wait_for(name, "/Connected", lambda v: v == 1)
                await observer.wait_for(name, "/Ac/Power", lambda v: v is not None and v > 0)
                assert view.violations == []
        finally:
            observer.close()
