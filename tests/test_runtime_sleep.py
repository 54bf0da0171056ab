"""Sleeping devices, end to end: simulated RTU line, real link, real dbus-daemon.

The fork's story: a PV inverter sleeps every night, the GX may boot while it sleeps, and
the service must stay on the bus throughout (systemcalc and VRM key on it).
"""

from __future__ import annotations

import time

import anyio
import pytest
from test_runtime_support import Observer, fast_config, running_supervisor, site_on_pty, spec_for, wait_until

pytestmark = pytest.mark.asyncio

CYCLES = 20


def close(a: float, b: float, rel: float = 0.02, abs_: float = 5.0) -> bool:
    return abs(a - b) <= max(abs_, rel * abs(b))


@pytest.mark.slow
@pytest.mark.timeout(180)
async def test_unit_sleeps_and_wakes_twenty_times(dbus_address: str, tmp_path) -> None:
    async with site_on_pty(tmp_path) as (site, port):
        inverter, meter_spec = site.inverter, spec_for(port.path, 2)  # the meter is identified
        inv_spec = spec_for(port.path, 1, "growatt_min")
        config = fast_config(dbus_address, tmp_path / "settings.xml", [inv_spec, meter_spec])
        observer = await Observer.connect(dbus_address)
        try:
            async with running_supervisor(config) as sup:
                while sup.device(inv_spec) is None or not sup.device(inv_spec).published.is_set() \
                        or sup.device(meter_spec) is None or not sup.device(meter_spec).published.is_set():
                    await anyio.sleep(0.02)
                inv = sup.device(inv_spec).service_name
                meter = sup.device(meter_spec).service_name
                assert inv == "com.victronenergy.pvinverter.growatt_QXB1234567"
                assert meter == "com.victronenergy.grid.eastron_23000123"
                meter_stats = sup.device(meter_spec).link.stats(2)
                instance = await observer.get(inv, "/DeviceInstance")
                await observer.wait_for(inv, "/Ac/Power", lambda v: v is not None and close(v, inverter.output_w))

                for cycle in range(CYCLES):
                    energy = await observer.get(inv, "/Ac/Energy/Forward")
                    assert energy is not None
                    inverter.asleep = True
                    slept_at = time.monotonic()
                    meter_before = meter_stats.transactions
                    await observer.wait_for(inv, "/Connected", lambda v: v == 0)
                    # not before the grace period: a sleeping inverter is not flapping
                    assert time.monotonic() - slept_at >= config.grace * 0.9, cycle
                    assert await observer.get(inv, "/Ac/Power") is None  # live values invalid
                    assert await observer.get(inv, "/Ac/L1/Current") is None
                    assert await observer.get(inv, "/Ac/Energy/Forward") == energy  # counters kept
                    assert await observer.get(inv, "/Serial") == "QXB1234567"
                    # the meter on the same line keeps refreshing while the inverter sleeps
                    await wait_until(lambda: meter_stats.transactions > meter_before + 2, timeout=5,
                                     what=f"meter reads in sleep cycle {cycle}")
                    assert await observer.get(meter, "/Connected") == 1

                    inverter.asleep = False
                    await observer.wait_for(inv, "/Connected", lambda v: v == 1)
                    await observer.wait_for(inv, "/Ac/Power", lambda v: v is not None and close(v, inverter.output_w))

                # the service never left the bus, and kept its identity and instance
                assert observer.disappeared(inv) == 0
                assert observer.disappeared(meter) == 0
                assert await observer.get(inv, "/DeviceInstance") == instance
                task = sup.device(inv_spec)
                assert task.ident == "growatt_QXB1234567"
                # backoff kept the sleeping unit's cost down: probes, not polls
                assert inverter.counters.silent < CYCLES * 15
                stats = await observer.wait_for(inv, "/Mgmt/Stats/Timeouts", lambda v: v and v >= CYCLES)
                assert stats >= CYCLES
        finally:
            observer.close()


@pytest.mark.timeout(120)
async def test_remembered_device_is_published_asleep_at_start(dbus_address: str, tmp_path) -> None:
    settings_file = tmp_path / "settings.xml"
    async with site_on_pty(tmp_path) as (site, port):
        inverter = site.inverter
        inv_spec = spec_for(port.path, 1)  # no model in the spec: identified on the first run
        config = fast_config(dbus_address, settings_file, [inv_spec])
        observer = await Observer.connect(dbus_address)
        try:
            # an earlier run, in daylight: identified, registered, remembered
            async with running_supervisor(config) as sup:
                while sup.device(inv_spec) is None or not sup.device(inv_spec).published.is_set():
                    await anyio.sleep(0.02)
                name = sup.device(inv_spec).service_name
                instance = await observer.get(name, "/DeviceInstance")
                assert await observer.set(name, "/CustomName", "Garage roof") == 0
                await anyio.sleep(0.3)
            await observer.wait_name(name, present=False)

            # night: the GX reboots while the inverter sleeps
            inverter.asleep = True
            silent_before = inverter.counters.silent
            async with running_supervisor(config) as sup:
                await observer.wait_name(name, timeout=5)
                assert await observer.get(name, "/Connected") == 0
                assert await observer.get(name, "/Serial") == "QXB1234567"
                assert await observer.get(name, "/DeviceInstance") == instance
                assert await observer.get(name, "/CustomName") == "Garage roof"
                assert await observer.get(name, "/FirmwareVersion")
                assert await observer.get(name, "/ProductName")
                assert await observer.get(name, "/Ac/Power") is None
                await anyio.sleep(1.0)
                assert inverter.counters.silent > silent_before  # it is being probed...
                assert await observer.get(name, "/Connected") == 0  # ...and still asleep

                # sunrise: it answers and fills in, under the same name, never re-registered
                inverter.asleep = False
                await observer.wait_for(name, "/Connected", lambda v: v == 1)
                await observer.wait_for(name, "/Ac/Power", lambda v: v is not None and close(v, inverter.output_w))
                assert await observer.get(name, "/DeviceInstance") == instance
                assert sum(1 for n, _o, new in observer.owner_changes if n == name and new) == 2  # once per run
                assert observer.disappeared(name) == 1  # only between the two runs
        finally:
            observer.close()
