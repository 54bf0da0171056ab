"""/metrics of a running mbclient: the supervisor polling the simulated seed site, scraped
over a real socket while the sun, the house load and the bus statistics move."""

from __future__ import annotations

import anyio
import pytest

from mbclient.metrics import serve_supervisor_metrics
from mbclient.runtime.config import RuntimeConfig
from mbclient.runtime.supervisor import Supervisor
from mbclient.spec import parse_spec
from test_metrics import http_get, samples

pytestmark = [pytest.mark.asyncio, pytest.mark.timeout(90)]


def by_kind(body: str, name: str) -> dict[str, float]:
    """{'grid': value, 'pvinverter': value} for one family."""
    out = {}
    for (family, labels), value in samples(body).items():
        if family == name:
            service = dict(labels).get("service", "")
            out[service.split(".")[2]] = value
    return out


async def test_metrics_of_a_running_supervisor(dbus_address: str, rtu_port, running_site, tmp_path) -> None:
    specs = [parse_spec(f"rtu:{rtu_port.path}:9600:1:growatt_min"), parse_spec(f"rtu:{rtu_port.path}:9600:2:sdm230")]
    cfg = RuntimeConfig(bus_address=dbus_address, settings_file=str(tmp_path / "settings.xml"), settings_wait=0.2,
                        force_devices=specs, stall_timeout=0, max_rss=0, stats_interval=0.5)
    async with anyio.create_task_group() as tg:
        supervisor = await tg.start(Supervisor(cfg).run)
        port = await tg.start(serve_supervisor_metrics, supervisor, 0, "127.0.0.1")
        # the families a dashboard needs, for both devices (energy comes with the slow registers)
        families = ("mbclient_ac_power", "mbclient_ac_l1_voltage", "mbclient_ac_energy_forward",
                    "mbclient_connected", "mbclient_modbus_transactions_total", "mbclient_modbus_timeouts_total",
                    "mbclient_modbus_frame_errors_total", "mbclient_modbus_latency_seconds_count")
        missing: list[str] = []
        with anyio.move_on_after(30):
            while True:
                _, _, body = await http_get(port)
                missing = [f for f in families if set(by_kind(body, f)) != {"grid", "pvinverter"}]
                if not missing and by_kind(body, "mbclient_connected") == {"grid": 1, "pvinverter": 1}:
                    break
                await anyio.sleep(0.2)
        assert not missing, (missing, body)
        assert "# TYPE mbclient_modbus_latency_seconds histogram" in body
        assert by_kind(body, "mbclient_modbus_latency_seconds_count")["grid"] > 0
        power = by_kind(body, "mbclient_ac_power")
        assert power["pvinverter"] > 0 and power["grid"] < 0  # exporting at noon

        # live: the house load jumps; the meter's power follows, transactions keep counting
        tx = by_kind(body, "mbclient_modbus_transactions_total")
        running_site.load_w = 5000.0
        with anyio.fail_after(20):
            while True:
                await anyio.sleep(0.3)
                _, _, body = await http_get(port)
                if by_kind(body, "mbclient_ac_power")["grid"] > 0:
                    break
        assert by_kind(body, "mbclient_modbus_transactions_total")["grid"] > tx["grid"]
        assert by_kind(body, "mbclient_refresh_interval_seconds")["grid"] > 0
        tg.cancel_scope.cancel()


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def test_metrics_port_option_serves_from_the_supervisor(dbus_address: str, rtu_port, running_site,
                                                              tmp_path) -> None:
    """``--metrics-port`` (RuntimeConfig.metrics_port) starts the server with the devices."""
    specs = [parse_spec(f"rtu:{rtu_port.path}:9600:2:sdm230")]
    port = _free_port()
    cfg = RuntimeConfig(bus_address=dbus_address, settings_file=str(tmp_path / "settings.xml"), settings_wait=0.2,
                        force_devices=specs, stall_timeout=0, max_rss=0, stats_interval=0.5, metrics_port=port)
    async with anyio.create_task_group() as tg:
        await tg.start(Supervisor(cfg).run)
        with anyio.fail_after(30):
            while True:
                _, _, body = await http_get(port)
                if by_kind(body, "mbclient_connected") == {"grid": 1}:
                    break
                await anyio.sleep(0.2)
        tg.cancel_scope.cancel()
