"""The runtime starts the zero-export controller on every limitable inverter it publishes,
and the controller is driven by settings over D-Bus like any other Venus setting."""

from __future__ import annotations

import anyio
import pytest

from test_runtime_support import Observer, fast_config, running_supervisor, site_on_pty, spec_for

pytestmark = [pytest.mark.asyncio, pytest.mark.timeout(60)]

INVERTER = "com.victronenergy.pvinverter.growatt_QXB1234567"


async def test_inverter_service_carries_the_controller(dbus_address: str, tmp_path) -> None:
    async with site_on_pty(tmp_path) as (site, port):
        config = fast_config(dbus_address, tmp_path / "settings.xml", [spec_for(port.path, 1, "growatt_min")])
        observer = await Observer.connect(dbus_address)
        try:
            async with running_supervisor(config) as sup:
                # unconfigured: it says so and never touches the inverter
                await observer.wait_for(INVERTER, "/dynamicGenerationStatus", lambda v: v == "Not Configured")
                assert site.inverter.rate == 255
                # configured from the settings service, as the GUI or dbus-spy would do it
                assert sup.settings is not None
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
