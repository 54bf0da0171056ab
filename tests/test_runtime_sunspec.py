"""SunSpec devices through the whole runtime: discovery over Modbus TCP, one D-Bus service per
device of a chain, /Ac/PowerLimit and the zero-export controller on a 123 and a 704 device."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

import anyio
import pytest

from mbclient.sim import serve_tcp
from mbclient.sim.sunspec import GRID_W, SunSpecUnit, der_device, fronius_like, smart_meter
from mbclient.spec import DeviceSpec, parse_spec
from test_runtime_support import Observer, fast_config, running_supervisor, wait_until

pytestmark = [pytest.mark.asyncio, pytest.mark.timeout(60)]

INVERTER = "com.victronenergy.pvinverter.sunspec_31234567"
METER = "com.victronenergy.grid.sunspec_31234567_2"


@contextlib.asynccontextmanager
async def tcp(*units: SunSpecUnit) -> AsyncIterator[int]:
    async with serve_tcp(list(units), turnaround=False) as server:
        yield server.port


def spec(port: int, unit: int, model: str = "") -> DeviceSpec:
    return parse_spec(f"tcp:127.0.0.1:{port}:{unit}" + (f":{model}" if model else ""))


async def test_a_chain_becomes_one_service_per_device_with_the_simulated_values(dbus_address: str,
                                                                                tmp_path) -> None:
    u = fronius_like(1, rated_w=8200)
    u.available_w = 6000.0
    u.start_physics()
    async with tcp(u) as port:
        # the inverter found by detection (no model named), the meter by its index
        specs = [spec(port, 1), spec(port, 1, "sunspec@2")]
        config = fast_config(dbus_address, tmp_path / "settings.xml", specs)
        observer = await Observer.connect(dbus_address)
        try:
            async with running_supervisor(config):
                await observer.wait_for(INVERTER, "/Ac/Power", lambda v: v == 6000.0)
                await observer.wait_for(METER, "/Ac/Power", lambda v: v == sum(GRID_W))
                assert await observer.get(INVERTER, "/ProductName") == "Fronius Symo 8.2-3-M"
                assert await observer.get(INVERTER, "/Ac/MaxPower") == 8200.0
                assert await observer.get(INVERTER, "/StatusCode") == 11
                assert await observer.get(METER, "/Ac/L2/Power") == GRID_W[1]
                assert await observer.get(METER, "/Serial") == "31234567_2"
                # ESS writes /Ac/PowerLimit: the inverter's model 123 gets it
                assert await observer.set(INVERTER, "/Ac/PowerLimit", 3280.0) == 0
                with anyio.fail_after(5):
                    while u.output_w() != 3280.0:
                        await anyio.sleep(0.02)
                await observer.wait_for(INVERTER, "/Ac/Power", lambda v: v == 3280.0)
                await observer.wait_for(INVERTER, "/Ac/PowerLimit", lambda v: v == 3280.0)
            # stopped: the limit is released, not left to the revert timer
            assert u.get(u.model(123), "WMaxLim_Ena") == 0 and u.output_w() == 6000.0
        finally:
            observer.close()


@pytest.mark.parametrize("make", [fronius_like, der_device], ids=["model-123", "model-704"])
async def test_zero_export_controller_limits_a_sunspec_inverter(make, dbus_address: str, tmp_path) -> None:  # noqa: ANN001
    inv = make(1)
    inv.available_w = 6000.0
    inv.start_physics()
    meter = smart_meter(240, feeds=[inv], load_w=1500.0)
    async with tcp(inv, meter) as port:
        specs = [spec(port, 1, "sunspec_inverter"), spec(port, 240, "sunspec_meter")]
        config = fast_config(dbus_address, tmp_path / "settings.xml", specs, control_poll=0.1)
        async with running_supervisor(config) as sup:
            await wait_until(lambda: all((t := sup.device(s)) is not None and t.published.is_set() for s in specs),
                             what="both devices published")
            task = sup.device(specs[0])
            await wait_until(lambda: task.dyngen is not None and task.dyngen.evaluations > 0,
                             what="the controller running")
            assert meter.load_w - inv.output_w() < 0  # exporting
            # the meter's net import is 3384 - 6445 kWh: put the budget just above it
            assert sup.settings is not None
            await sup.settings.set("/Settings/DynamicGeneration/energyDifference", -3000.0)
            await sup.settings.set("/Settings/DynamicGeneration/derateGeneration", 1)
            await wait_until(lambda: inv.limit_pct() is not None and inv.limit_pct() < 100, timeout=20,
                             what="a limit written through the SunSpec controls")
            await wait_until(lambda: inv.output_w() < 6000.0, what="output curtailed")


async def test_a_remembered_sunspec_meter_is_published_at_night_and_fills_in(dbus_address: str, tmp_path) -> None:
    """A GX rebooted while the data manager sleeps: the chain's meter (device 2) is
    published at once from memory with /Connected = 0, then resolved when it answers."""
    u = fronius_like(1)
    u.start_physics()
    settings_file = tmp_path / "settings.xml"
    async with tcp(u) as port:
        specs = [spec(port, 1, "sunspec@2")]
        config = fast_config(dbus_address, settings_file, specs)
        observer = await Observer.connect(dbus_address)
        try:
            async with running_supervisor(config):
                await observer.wait_for(METER, "/Ac/Power", lambda v: v == sum(GRID_W))
                instance = await observer.get(METER, "/DeviceInstance")
            await observer.wait_name(METER, present=False)
            u.asleep = True
            async with running_supervisor(config):
                await observer.wait_name(METER, timeout=5)
                assert await observer.get(METER, "/Connected") == 0
                assert await observer.get(METER, "/DeviceInstance") == instance
                assert await observer.get(METER, "/Ac/Power") is None
                u.asleep = False
                await observer.wait_for(METER, "/Connected", lambda v: v == 1)
                await observer.wait_for(METER, "/Ac/Power", lambda v: v == sum(GRID_W))
                assert await observer.get(METER, "/Ac/L3/Voltage") is not None
        finally:
            observer.close()


async def test_a_network_scan_finds_every_device_of_a_chain() -> None:
    import ipaddress
    import socket

    from mbclient.discovery.netscan import NetworkScan, parse_networks

    host = "127.77.17.2"
    with socket.socket() as s:
        s.bind((host, 0))
        port = s.getsockname()[1]
    async with serve_tcp([fronius_like(1)], host=host, port=port, turnaround=False):
        scan = NetworkScan(parse_networks(["127.77.17.0/30"]), port=port, timeout=0.2,
                           own={ipaddress.IPv4Address("127.77.17.1")})
        found = await scan.run()
    got = sorted((str(f.spec), f.model, f.ident, f.role) for f in found)
    assert got == [
        (f"tcp:{host}:{port}:1", "sunspec_inverter", "sunspec_31234567", "pvinverter"),
        (f"tcp:{host}:{port}:1:sunspec@2", "sunspec_meter", "sunspec_31234567_2", "grid"),
    ]


async def test_a_chain_over_rs485_publishes_like_over_tcp(dbus_address: str, tmp_path) -> None:
    from mbclient.sim import SimBus, serve_rtu
    from test_runtime_support import BAUD, spec_for

    u = fronius_like(1)
    u.available_w = 4500.0
    u.start_physics()
    async with serve_rtu(SimBus(BAUD, units=[u]), directory=tmp_path) as port:
        specs = [spec_for(port.path, 1), spec_for(port.path, 1, "sunspec@2")]
        config = fast_config(dbus_address, tmp_path / "settings.xml", specs)
        observer = await Observer.connect(dbus_address)
        try:
            async with running_supervisor(config):
                await observer.wait_for(INVERTER, "/Ac/Power", lambda v: v == 4500.0)
                await observer.wait_for(METER, "/Ac/Power", lambda v: v == sum(GRID_W))
                assert await observer.set(INVERTER, "/Ac/PowerLimit", 4100.0) == 0
                await wait_until(lambda: u.output_w() == 4100.0, what="the limit on the RS-485 inverter")
        finally:
            observer.close()
