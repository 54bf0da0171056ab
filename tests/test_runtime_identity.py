"""Who a device is: never-seen units that sleep, swapped units, the device list format and
the settings paths the runtime writes (localsettings' rules)."""

from __future__ import annotations

import re

import anyio
import pytest
from test_runtime_support import BAUD, Observer, fast_config, running_supervisor, spec_for

from mbclient.runtime.identity import (
    KnownIdentity,
    identity_from_settings,
    identity_to_settings,
    memory_settings,
    setting_element,
    spec_key,
)
from mbclient.runtime.supervisor import devices_setting, merge_specs, parse_device_list
from mbclient.sim import SimBus, growatt_min, serve_rtu
from mbclient.spec import parse_spec

# localsettings: every element [A-Za-z0-9_], none starting with '_' (AddSettings error -2)
SETTING_PATH = re.compile(r"^/Settings(/[A-Za-z0-9][A-Za-z0-9_]*)+$")


@pytest.mark.parametrize("spec", [
    "rtu:ttyUSB0:9600:1", "rtu:/dev/serial/by-id/usb-FTDI_FT232R-if00-port0:9600:247:growatt_min",
    "ascii:ttyS1:19200:3", "tcp:192.168.1.5:502:1", "udp:[fe80::1]:502:2", "rtuovertcp:gw.local:4001:7",
])
def test_remembered_identity_paths_follow_localsettings_rules(spec: str) -> None:
    s = parse_spec(spec)
    for path, default in memory_settings(s):
        assert SETTING_PATH.match(path), path
        assert default == ""
    assert SETTING_PATH.match(devices_setting(s.port_name))


def test_remembered_identity_round_trip_and_key() -> None:
    spec = parse_spec("rtu:ttyUSB0:9600:1")
    known = KnownIdentity("growatt_min", "QXB1234567", "DH1.0/ZBdh02")
    stored = identity_to_settings(spec, known)
    assert identity_from_settings(spec, stored) == known
    # naming the model or changing the baud rate does not make it another device
    assert identity_from_settings(parse_spec("rtu:ttyUSB0:19200:1:growatt_min"), stored) == known
    assert identity_from_settings(parse_spec("rtu:ttyUSB0:9600:2"), stored) is None
    assert identity_from_settings(spec, {**stored, next(iter(stored)): ""}) is None  # no model: unknown
    assert spec_key(parse_spec("tcp:10.0.0.2:502:3")) == "tcp_10_0_0_2_502_3"
    assert setting_element("_x") == "x" and setting_element("") == "x"


def test_device_list_is_tolerant_and_one_task_per_unit() -> None:
    specs, problems = parse_device_list("rtu:ttyUSB0:9600:1, nonsense ,tcp:10.0.0.2:502:1:nosuchmodel,,"
                                        "rtu:ttyUSB0:9600:2:sdm230")
    assert [str(s) for s in specs] == ["rtu:ttyUSB0:9600:1", "rtu:ttyUSB0:9600:2:sdm230"]
    assert len(problems) == 2 and "unknown model" in problems[1]
    merged = merge_specs([parse_spec("rtu:ttyUSB0:9600:1")], [parse_spec("rtu:ttyUSB0:9600:1:growatt_min")],
                         [parse_spec("rtu:ttyUSB1:9600:1")])
    assert sorted(map(str, merged.values())) == ["rtu:ttyUSB0:9600:1:growatt_min", "rtu:ttyUSB1:9600:1"]
    assert parse_device_list(None) == ([], [])



@pytest.mark.asyncio
@pytest.mark.timeout(60)
async def test_unknown_sleeping_unit_costs_one_probe_per_interval(dbus_address: str, tmp_path) -> None:
    bus = SimBus(BAUD)
    inverter = bus.add(growatt_min(1, serial="QXB5550001"))
    inverter.asleep = True  # never seen, no model in the spec: nothing to publish yet
    name = "com.victronenergy.pvinverter.growatt_QXB5550001"
    async with serve_rtu(bus, directory=tmp_path) as port:
        config = fast_config(dbus_address, tmp_path / "settings.xml", [spec_for(port.path, 1)])
        observer = await Observer.connect(dbus_address)
        try:
            async with running_supervisor(config):
                await anyio.sleep(0.5)
                before = inverter.counters.silent
                await anyio.sleep(2.0)
                probes = inverter.counters.silent - before
                # backoff capped at 0.1 s: at most one request per interval, not one per
                # known model family (identify runs only once the unit answers)
                assert 1 <= probes <= 2.0 / config.backoff_cap + 2
                assert name not in await observer.names()
                inverter.asleep = False
                await observer.wait_name(name)
                assert await observer.get(name, "/Connected") == 1
                assert await observer.get(name, "/ProductName") == "Growatt MIN TL-X"
        finally:
            observer.close()


@pytest.mark.asyncio
@pytest.mark.timeout(60)
async def test_swapped_unit_replaces_the_remembered_service(dbus_address: str, tmp_path) -> None:
    bus = SimBus(BAUD)
    bus.add(growatt_min(1, serial="QXB1111111"))
    old, new = "com.victronenergy.pvinverter.growatt_QXB1111111", "com.victronenergy.pvinverter.growatt_QXB2222222"
    async with serve_rtu(bus, directory=tmp_path) as port:
        config = fast_config(dbus_address, tmp_path / "settings.xml", [spec_for(port.path, 1, "growatt_min")])
        observer = await Observer.connect(dbus_address)
        try:
            async with running_supervisor(config):  # yesterday: the old inverter
                await observer.wait_name(old)
            await observer.wait_name(old, present=False)
            bus.remove(1)
            replacement = bus.add(growatt_min(1, serial="QXB2222222"))
            replacement.asleep = True
            async with running_supervisor(config):  # today, at night: memory says the old one
                await observer.wait_name(old)
                assert await observer.get(old, "/Connected") == 0
                replacement.asleep = False  # the new one answers at dawn
                await observer.wait_name(new)
                await observer.wait_name(old, present=False)
                assert await observer.get(new, "/Connected") == 1
                assert await observer.get(new, "/Serial") == "QXB2222222"
                # and the memory now holds the new serial
                await anyio.sleep(0.3)
            async with running_supervisor(config):
                await observer.wait_name(new)
                assert old not in await observer.names()
        finally:
            observer.close()
