"""The runtime starts the zero-export controller on every limitable inverter it publishes,
and the controller is driven by settings over D-Bus like any other Venus setting."""

from __future__ import annotations

import time

import anyio
import pytest

from mbclient.devices import DeviceOptions
from mbclient.runtime.config import RuntimeConfig
from mbclient.runtime.supervisor import Supervisor
from mbclient.sim import seed_site, serve_rtu
from test_runtime_support import Observer, fast_config, running_supervisor, site_on_pty, spec_for

pytestmark = [pytest.mark.asyncio, pytest.mark.timeout(60)]

INVERTER = "com.victronenergy.pvinverter.growatt_QXB1234567"


async def settings_declared(sup: Supervisor) -> None:
    """Until the controller has declared its settings: the inverter's service (and its
    /dynamicGenerationStatus, "Not Configured" from the first moment) is on the bus a
    moment before, and a setting written before it exists is refused."""
    assert sup.settings is not None
    with anyio.fail_after(10):
        while await sup.settings.get("/Settings/DynamicGeneration/energyDifference") is None:
            await anyio.sleep(0.05)


async def test_inverter_service_carries_the_controller(dbus_address: str, tmp_path) -> None:
    async with site_on_pty(tmp_path) as (site, port):
        config = fast_config(dbus_address, tmp_path / "settings.xml", [spec_for(port.path, 1, "growatt_min")])
        observer = await Observer.connect(dbus_address)
        try:
            async with running_supervisor(config) as sup:
                # unconfigured: it says so and never touches the inverter
                await observer.wait_for(INVERTER, "/dynamicGenerationStatus", lambda v: v == "Not Configured")
                assert site.inverter.rate == 255
                # configured from the settings service, as the GUI or dbus-spy would do it -
                # once the controller has declared its settings (the status item is there
                # from the service's first moment, the settings a moment later)
                await settings_declared(sup)
                assert site.inverter.rate == 255
                assert await sup.settings.set("/Settings/DynamicGeneration/energyDifference", 5.0) == 0
                await observer.wait_for(INVERTER, "/dynamicGenerationStatus", lambda v: v == "Configured, G100")
                assert site.inverter.rate == 255  # derating not enabled: still hands off
                assert await sup.settings.set("/Settings/DynamicGeneration/derateGeneration", 1) == 0
                # no grid meter on this bus: a configured controller must not trust nothing
                await observer.wait_for(INVERTER, "/dynamicGenerationFailSafe", lambda v: v == 1)
                with anyio.fail_after(5):
                    while site.inverter.rate == 255:  # the safe limit reaches holding 3
                        await anyio.sleep(0.05)
                assert site.inverter.rate <= 100
        finally:
            observer.close()


async def test_a_silent_meter_of_ours_puts_the_safe_limit_on_the_wire_after_the_stale_timeout(
        dbus_address: str, tmp_path) -> None:
    """Our own grid meter stops answering. Its D-Bus service keeps answering with the last
    reading (and /Connected stays 1 through the 10 s grace period), yet the controller must
    treat it as stale after the 5 s stale timeout and have the safe limit in the inverter
    within the second after: on the seed's 9600 Bd line, with production timers. The 5 s
    count from the meter's last answer (a read answered just before the silence is fresh
    for 5 s more)."""
    site = seed_site(9600, sun_w=3000.0, load_w=800.0)
    last_answer = [0.0]
    served = site.meter.on_read

    def on_read(*args) -> None:  # noqa: ANN002
        last_answer[0] = time.monotonic()
        if served is not None:
            served(*args)

    site.meter.on_read = on_read
    async with site.running(0.05), serve_rtu(site.bus, directory=tmp_path) as port:
        specs = [spec_for(port.path, 1, "growatt_min"), spec_for(port.path, 2, "sdm230")]
        config = RuntimeConfig(bus_address=dbus_address, settings_file=str(tmp_path / "settings.xml"),
                               force_devices=specs, stall_timeout=0, max_rss=0)
        assert config.grace >= 10.0
        observer = await Observer.connect(dbus_address)
        sup = Supervisor(config, options_factory=lambda spec: DeviceOptions(baud=9600))
        try:
            async with anyio.create_task_group() as tg:
                await tg.start(sup.run)
                await observer.wait_for(INVERTER, "/dynamicGenerationStatus", lambda v: v == "Not Configured", 20)
                await settings_declared(sup)
                await sup.settings.set("/Settings/DynamicGeneration/energyDifference", 700.0)
                await sup.settings.set("/Settings/DynamicGeneration/derateGeneration", 1)
                await observer.wait_for(INVERTER, "/dynamicGenerationStatus", lambda v: v == "Configured, limiting", 20)
                with anyio.fail_after(20):  # settled: a limit of its own (above the safe 2 %), no export
                    while not (2 < site.inverter.rate <= 100 and site.grid_w > 0
                               and time.monotonic() - site.inverter.write_log[-1][0] > 2.0):
                        await anyio.sleep(0.05)
                meter = next(n for n in await observer.names() if n.startswith("com.victronenergy.grid."))

                site.meter.asleep = True  # the meter stops answering
                silenced = time.monotonic()
                with anyio.fail_after(10):
                    while site.inverter.rate != 2:
                        await anyio.sleep(0.01)
                safe_at = time.monotonic()
                after = safe_at - last_answer[0]
                assert last_answer[0] <= silenced
                # still "connected" and still answering on D-Bus: the read's age decided
                assert await observer.get(meter, "/Connected") == 1
                assert await observer.get(INVERTER, "/dynamicGenerationFailSafe") == 1
                assert 5.0 <= after <= 6.0, f"safe limit {after:.2f} s after the meter's last answer"
                assert safe_at - silenced <= 6.0
                tg.cancel_scope.cancel()
        finally:
            observer.close()
