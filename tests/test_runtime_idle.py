"""A steady site wakes for its Modbus transactions and for real events, nothing else.

The runtime runs an inverter (with the zero-export controller, not configured) and a grid
meter on a pseudo-terminal, next to a battery service whose voltage changes five times a
second and a Multi that never changes (as the controller's other inputs). While nothing
is to be done the controller's loop does not turn, its input tracker follows nobody (no
signal comes in, no liveness probe goes out) and discovery does not look at the Enabled
settings again. Configured, the controller follows its inputs at once and steers."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import anyio
import pytest
from dbus_fast import Message, MessageType

from mbclient.control import ladder as L
from mbclient.control.dyngen import INPUTS, STATUS
from mbclient.dbus.service import ServiceExport
from mbclient.discovery.config import DiscoveryConfig
from mbclient.items import ItemStore
from test_runtime_support import fast_config, running_supervisor, site_on_pty, spec_for, wait_until

pytestmark = [pytest.mark.asyncio, pytest.mark.timeout(90)]

WINDOW = 3.0  # seconds counted


@contextlib.asynccontextmanager
async def battery_and_multi(address: str) -> AsyncIterator[None]:
    """A battery whose voltage moves every 0.2 s and a Multi that never changes."""
    battery, vebus = ItemStore(), ItemStore()
    for store, values in ((battery, {"/DeviceInstance": 512, "/Connected": 1, "/Soc": 60.0,
                                     "/Dc/0/Power": 0.0, "/Dc/0/Voltage": 52.0}),
                          (vebus, {"/DeviceInstance": 276, "/Connected": 1, "/Ac/ActiveIn/P": 0.0, "/State": 3,
                                   "/Leds/Bulk": 1, "/Leds/Absorption": 0})):
        for path, value in values.items():
            store.add(path, value)
    exports = [ServiceExport(battery, address), ServiceExport(vebus, address)]
    await exports[0].start("com.victronenergy.battery.sim")
    await exports[1].start("com.victronenergy.vebus.sim")

    async def moving() -> None:
        volts = 52.0
        while True:
            volts = 52.1 if volts == 52.0 else 52.0
            battery.set("/Dc/0/Voltage", volts)
            battery.flush()
            await asyncio.sleep(0.2)

    task = asyncio.create_task(moving())
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        for export in exports:
            await export.stop()


async def test_an_unconfigured_controller_and_discovery_sleep_until_something_happens(
        dbus_address: str, tmp_path) -> None:
    async with site_on_pty(tmp_path) as (site, port), battery_and_multi(dbus_address):
        inverter, meter = spec_for(port.path, 1, "growatt_min"), spec_for(port.path, 2, "sdm230")
        config = fast_config(dbus_address, tmp_path / "settings.xml", [inverter, meter],
                             discovery=DiscoveryConfig(mdns=False))
        async with running_supervisor(config) as sup:
            def published(spec) -> bool:  # noqa: ANN001
                task = sup.device(spec)
                return task is not None and task.published.is_set()

            await wait_until(lambda: published(inverter) and published(meter), timeout=20, what="both published")
            task = sup.device(inverter)
            controller = task.dyngen
            assert controller is not None
            await wait_until(lambda: task.store.get(STATUS) == L.NOT_CONFIGURED, what="Not Configured")
            settings = sup.settings
            assert settings is not None
            for spec in (inverter, meter):  # discovery's rule: saved devices are Enabled
                ident = sup.device(spec).ident
                path = f"/Settings/Devices/{ident}/Enabled"
                with anyio.fail_after(5):
                    while await settings.get(path) != 1:
                        await anyio.sleep(0.05)
            await anyio.sleep(1.0)  # the start-up is behind us

            # count: the controller loop's passes, what reaches the tracker's connection
            # besides name changes, discovery's looks at the Enabled settings
            passes, messages, looks = [0], [0], [0]
            next_look = controller._next_look

            def counted_next_look(*args):  # noqa: ANN002, ANN202
                passes[0] += 1
                return next_look(*args)

            def heard(msg: Message) -> None:
                if msg.member != "NameOwnerChanged" and msg.message_type is not MessageType.METHOD_CALL:
                    messages[0] += 1

            enable = sup.discovery._enable_configured

            async def counted_enable():  # noqa: ANN202
                looks[0] += 1
                return await enable()

            controller._next_look = counted_next_look
            bus = controller.tracker._bus
            assert bus is not None
            bus.add_message_handler(heard)
            sup.discovery._enable_configured = counted_enable
            transactions = site.bus.transactions
            await anyio.sleep(WINDOW)
            transactions = site.bus.transactions - transactions

            assert transactions > 10  # the devices are polled all along
            # the old loops: the controller published every second, the tracker took the
            # battery's 15 signals and probed the quiet Multi, discovery looked every second
            assert passes[0] <= 1, f"controller loop passes while Not Configured: {passes[0]}"
            assert messages[0] == 0, f"messages to the idle input tracker: {messages[0]}"
            assert looks[0] == 0, f"Enabled settings looked at {looks[0]} times with nothing published"
            assert "battery: com.victronenergy.battery.sim idle" in task.store.get(INPUTS)

            # configured (the seed meter's net import, 666.7 kWh, lies inside the band):
            # every input is followed at once and the controller steers on it
            await settings.set("/Settings/DynamicGeneration/energyDifference", 700.0)
            await settings.set("/Settings/DynamicGeneration/derateGeneration", 1)
            await wait_until(lambda: task.store.get(STATUS) not in (L.NOT_CONFIGURED, L.G100, L.FAIL_SAFE),
                             what="the controller steering")
            text = task.store.get(INPUTS)
            for service in ("grid.", "vebus.sim ok", "battery.sim ok"):
                assert service in text, text
            await wait_until(lambda: messages[0] > 0, what="battery signals followed")
            assert task.store.get(STATUS) != L.FAIL_SAFE

            # not configured again: nothing followed any more
            await settings.set("/Settings/DynamicGeneration/energyDifference", 0.0)
            await wait_until(lambda: task.store.get(STATUS) == L.NOT_CONFIGURED, what="Not Configured again")
            await anyio.sleep(0.5)
            messages[0] = 0
            await anyio.sleep(1.0)
            assert messages[0] == 0, f"messages to the idle input tracker: {messages[0]}"
