"""/metrics over a real socket: the families a Grafana dashboard is built on, with live values."""

from __future__ import annotations

import asyncio
import math

import pytest

from mbclient.items import ItemStore
from mbclient.metrics import MetricsRegistry, MetricsServer, metric_name_for_path, parse_exposition
from mbclient.transports.base import UnitStats

pytestmark = pytest.mark.asyncio


async def http_get(port: int, path: str = "/metrics", method: str = "GET") -> tuple[int, dict[str, str], str]:
    """What curl does: one request, read to EOF."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(f"{method} {path} HTTP/1.1\r\nHost: localhost\r\nAccept: */*\r\n\r\n".encode())
    await writer.drain()
    raw = await asyncio.wait_for(reader.read(), 10)
    writer.close()
    head, _, body = raw.partition(b"\r\n\r\n")
    lines = head.decode().split("\r\n")
    status = int(lines[0].split()[1])
    headers = {k.lower(): v.strip() for k, v in (ln.split(":", 1) for ln in lines[1:])}
    return status, headers, body.decode()


def samples(text: str) -> dict[tuple[str, frozenset], float]:
    return {(name, frozenset(labels.items())): value for name, labels, value in parse_exposition(text)}


def value(text: str, name: str, **labels: str) -> float:
    return samples(text)[(name, frozenset(labels.items()))]


def meter_store() -> ItemStore:
    s = ItemStore()
    s.add("/ProductName", "Eastron SDM230")
    s.add("/Serial", 'A"12\\3')  # label escaping
    s.add("/Mgmt/Connection", "Modbus RTU ttyUSB0 unit 2")
    s.add("/DeviceInstance", 30)
    s.add("/Connected", 1)
    s.add("/Ac/Power", None, unit="W")
    s.add("/Ac/L1/Voltage", None, unit="V", precision=1)
    s.add("/Ac/Energy/Forward", None, unit="kWh", precision=2)
    s.add("/Mgmt/Stats/State", "online")
    s.add("/Mgmt/Stats/RefreshInterval", 0.52)
    s.add("/Mgmt/Stats/Timeouts", 99)  # must not be exported twice (UnitStats is the source)
    return s


async def test_metrics_families_and_live_values() -> None:
    grid, pv = meter_store(), meter_store()
    grid_stats, pv_stats = UnitStats(), UnitStats()
    registry = MetricsRegistry()
    registry.add_device("rtu:ttyUSB0:9600:2", "com.victronenergy.grid.cgwacs_ttyUSB0_mb2", grid, grid_stats)
    name = {"now": "com.victronenergy.pvinverter.pv_X1"}
    registry.add_device("rtu:ttyUSB0:9600:1", lambda: name["now"], pv, lambda: pv_stats)
    controller = {"state": "tracking", "ok": 3, "failed": 1}
    registry.add_state("control_state", "Zero-export controller state", lambda: controller["state"])
    registry.add_value(
        "control_writes_total", "Power-limit writes by result",
        lambda: {(("result", "ok"),): controller["ok"], (("result", "failed"),): controller["failed"]}, "counter",
    )
    server = MetricsServer(registry)
    port = await server.start("127.0.0.1", 0)
    try:
        grid.update({"/Ac/Power": -812, "/Ac/L1/Voltage": 231.4, "/Ac/Energy/Forward": 1234.56})
        for latency in (0.004, 0.03, 0.03, 0.2, 3.0):
            grid_stats.transactions += 1
            grid_stats.record_latency(latency)
        grid_stats.timeouts = 2
        grid_stats.frame_errors = 1
        pv.update({"/Connected": 0, "/Mgmt/Stats/State": "asleep"})
        pv_stats.timeouts = 7

        status, headers, body = await http_get(port)
        assert status == 200
        assert headers["content-type"].startswith("text/plain; version=0.0.4")
        g = {"service": "com.victronenergy.grid.cgwacs_ttyUSB0_mb2"}
        p = {"service": "com.victronenergy.pvinverter.pv_X1"}
        assert "# TYPE mbclient_ac_power gauge" in body
        assert "# HELP mbclient_ac_power D-Bus /Ac/Power (W)" in body
        assert value(body, "mbclient_ac_power", **g) == -812
        assert value(body, "mbclient_ac_l1_voltage", **g) == 231.4
        assert value(body, "mbclient_ac_energy_forward", **g) == 1234.56
        assert value(body, "mbclient_connected", **g) == 1
        assert value(body, "mbclient_connected", **p) == 0
        # invalid values are absent, not zero: a sleeping inverter has no power series
        assert ("mbclient_ac_power", frozenset(p.items())) not in samples(body)
        assert "mbclient_mgmt_stats_timeouts" not in body
        # bus health
        assert value(body, "mbclient_modbus_transactions_total", **g) == 5
        assert value(body, "mbclient_modbus_timeouts_total", **g) == 2
        assert value(body, "mbclient_modbus_timeouts_total", **p) == 7
        assert value(body, "mbclient_modbus_frame_errors_total", **g) == 1
        assert value(body, "mbclient_modbus_exceptions_total", **g) == 0
        assert value(body, "mbclient_refresh_interval_seconds", **g) == 0.52
        assert "# TYPE mbclient_modbus_latency_seconds histogram" in body
        assert value(body, "mbclient_modbus_latency_seconds_bucket", le="0.01", **g) == 1
        assert value(body, "mbclient_modbus_latency_seconds_bucket", le="0.05", **g) == 3
        assert value(body, "mbclient_modbus_latency_seconds_bucket", le="2.5", **g) == 4
        assert value(body, "mbclient_modbus_latency_seconds_bucket", le="+Inf", **g) == 5
        assert value(body, "mbclient_modbus_latency_seconds_count", **g) == 5
        assert math.isclose(value(body, "mbclient_modbus_latency_seconds_sum", **g), 3.264)
        assert value(body, "mbclient_modbus_latency_seconds_bucket", le="+Inf", **p) == 0
        # identity and state
        info = [lab for n, lab, _ in parse_exposition(body) if n == "mbclient_device_info" and lab["service"] == g["service"]]
        assert info == [{**g, "product": "Eastron SDM230", "serial": 'A"12\\3', "connection": "Modbus RTU ttyUSB0 unit 2"}]
        assert value(body, "mbclient_device_state", state="asleep", **p) == 1
        # controller
        assert value(body, "mbclient_control_state", state="tracking") == 1
        assert value(body, "mbclient_control_writes_total", result="ok") == 3
        assert value(body, "process_resident_memory_bytes") > 1_000_000

        # live: the next scrape sees the changes, including a renamed service (role change)
        grid.set("/Ac/Power", 1500)
        grid_stats.timeouts += 1
        pv.set("/Mgmt/Stats/State", "online")
        pv.set("/Connected", 1)
        name["now"] = "com.victronenergy.acload.pv_X1"
        controller["state"] = "idle"
        _, _, body2 = await http_get(port)
        assert value(body2, "mbclient_ac_power", **g) == 1500
        assert value(body2, "mbclient_modbus_timeouts_total", **g) == 3
        a = {"service": "com.victronenergy.acload.pv_X1"}
        assert value(body2, "mbclient_connected", **a) == 1
        assert value(body2, "mbclient_device_state", state="asleep", **a) == 0
        assert value(body2, "mbclient_device_state", state="online", **a) == 1
        assert value(body2, "mbclient_control_state", state="tracking") == 0
        assert value(body2, "mbclient_control_state", state="idle") == 1

        # device removed: its series are gone
        registry.remove_device("rtu:ttyUSB0:9600:2")
        _, _, body3 = await http_get(port)
        assert g["service"] not in body3
    finally:
        await server.aclose()


async def test_http_edges() -> None:
    server = MetricsServer(MetricsRegistry(process=False))
    port = await server.start("127.0.0.1", 0)
    try:
        assert (await http_get(port, "/nope"))[0] == 404
        assert (await http_get(port, "/metrics", "POST"))[0] == 405
        status, headers, body = await http_get(port, "/metrics", "HEAD")
        assert status == 200 and body == "" and int(headers["content-length"]) > 0
        status, _, body = await http_get(port, "/metrics?x=1")
        assert status == 200 and "mbclient_build_info" in body
        # a client that connects and says nothing does not block others
        idle_r, idle_w = await asyncio.open_connection("127.0.0.1", port)
        assert (await http_get(port))[0] == 200
        idle_w.close()
    finally:
        await server.aclose()


async def test_serve_runs_until_cancelled() -> None:
    server = MetricsServer(MetricsRegistry(process=False))

    class Status:
        port: int | None = None

        def started(self, value: int) -> None:
            self.port = value

    status = Status()
    task = asyncio.create_task(server.serve("127.0.0.1", 0, task_status=status))
    for _ in range(100):
        if status.port:
            break
        await asyncio.sleep(0.01)
    assert (await http_get(status.port))[0] == 200
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    with pytest.raises(OSError):
        await asyncio.open_connection("127.0.0.1", status.port)


async def test_port_in_use_is_a_config_error() -> None:
    from mbclient.errors import ConfigError

    first = MetricsServer(MetricsRegistry(process=False))
    port = await first.start("127.0.0.1", 0)
    try:
        with pytest.raises(ConfigError, match="metrics: cannot listen"):
            await MetricsServer(MetricsRegistry()).start("127.0.0.1", port)
    finally:
        await first.aclose()


@pytest.mark.parametrize(
    ("path", "name"),
    [
        ("/Ac/L1/Power", "ac_l1_power"),
        ("/Ac/PowerLimit", "ac_power_limit"),
        ("/Ac/Energy/Forward", "ac_energy_forward"),
        ("/Dc/0/MPPVoltage", "dc_0_mpp_voltage"),
        ("/StatusCode", "status_code"),
        ("/Pv/1/V", "pv_1_v"),
    ],
)
async def test_metric_names_from_paths(path: str, name: str) -> None:
    assert metric_name_for_path(path) == name
