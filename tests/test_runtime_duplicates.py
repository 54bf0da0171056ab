"""Two specs for one device: one clear line naming both, never "first wins" in silence
nor a restart loop on a taken service name."""

from __future__ import annotations

import logging

import anyio
import pytest
from test_runtime_support import Observer, fast_config, running_supervisor

from mbclient.sim.bus import SimBus
from mbclient.sim.models import sdm230
from mbclient.sim.net import serve_tcp
from mbclient.spec import parse_spec

pytestmark = pytest.mark.asyncio
METER = "com.victronenergy.grid.eastron_23000123"


@pytest.mark.timeout(60)
async def test_two_names_for_one_host_run_the_device_once(dbus_address: str, tmp_path, caplog) -> None:
    """127.0.0.1 and localhost are the same meter: published once, one error line, and the
    second spec waits instead of failing and restarting every few seconds."""
    caplog.set_level(logging.INFO)
    bus = SimBus(115200)
    bus.add(sdm230(2))
    async with serve_tcp(bus) as server:
        first, second = (parse_spec(f"tcp:{host}:{server.port}:2:sdm230") for host in ("127.0.0.1", "localhost"))
        config = fast_config(dbus_address, tmp_path / "settings.json", [first, second])
        observer = await Observer.connect(dbus_address)
        try:
            async with running_supervisor(config) as sup:
                await observer.wait_for(METER, "/Connected", lambda v: v == 1)
                await anyio.sleep(1.5)  # restarts would come every 50-100 ms with test timers
                tasks = [sup.device(first), sup.device(second)]
                assert sum(1 for t in tasks if t is not None and t.published.is_set()) == 1
                assert await observer.get(METER, "/Connected") == 1
        finally:
            observer.close()
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1, errors
    assert "are the same device" in errors[0] and str(first) in errors[0] and str(second) in errors[0]
    assert not any("restarting" in r.getMessage() for r in caplog.records)


@pytest.mark.timeout(60)
async def test_conflicting_saved_specs_are_one_line(dbus_address: str, tmp_path, caplog) -> None:
    """The saved list (GUI, by hand) names unit 2 as two different models: the first runs,
    the other is named once in the log, also when the setting is written again."""
    from mbclient.runtime.supervisor import devices_setting

    caplog.set_level(logging.INFO)
    bus = SimBus(115200)
    bus.add(sdm230(2))
    async with serve_tcp(bus) as server:
        meter, wrong = f"tcp:127.0.0.1:{server.port}:2:sdm230", f"tcp:127.0.0.1:{server.port}:2:growatt_min"
        config = fast_config(dbus_address, tmp_path / "settings.json", [])
        observer = await Observer.connect(dbus_address)
        try:
            async with running_supervisor(config) as sup:
                path = devices_setting(config.port_name)
                assert await sup.settings.set(path, f"{meter},{wrong}") == 0
                await observer.wait_for(METER, "/Connected", lambda v: v == 1)
                assert await sup.settings.set(path, f"{meter}, {wrong}") == 0  # rewritten, same content
                await anyio.sleep(0.5)
                assert sup.device(parse_spec(meter)) is not None and str(sup.device(parse_spec(meter)).spec) == meter
        finally:
            observer.close()
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1 and meter in errors[0] and wrong in errors[0] and "same address" in errors[0], errors
