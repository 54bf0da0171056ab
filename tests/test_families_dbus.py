"""Two stock families through the real process on a private D-Bus, as the GUI drives them:
the EV Charging Station's controls written with SetValue reach the charger and come back
from it; a Carlo Gavazzi EM24 Ethernet switched to single phase through /PhaseConfig
drops its L2/L3 paths from the published service."""

from __future__ import annotations

import anyio
import pytest
from test_cli_run import finish, running_cli
from test_runtime_support import Observer

from mbclient.sim.meters import CarloGavazziMeter, EvChargingStation
from mbclient.sim.net import serve_tcp

pytestmark = pytest.mark.asyncio


@pytest.mark.timeout(90)
async def test_evcs_and_em24_controls_over_dbus(dbus_address: str, tmp_path) -> None:  # noqa: ANN001
    evcs = EvChargingStation(1, product_id=0xC023, serial="EVC777", name="Carport")
    evcs.set_u16("holding", 5009, 1)  # auto
    em24 = CarloGavazziMeter(1, layout="em24_ethernet", serial="BX55555")
    em24.measure((230.0, 231.0, 229.0), (500.0, 600.0, 700.0))
    charger, meter = "com.victronenergy.evcharger.evc_EVC777", "com.victronenergy.grid.cg_BX55555"
    async with serve_tcp(evcs) as s1, serve_tcp(em24) as s2:
        observer = await Observer.connect(dbus_address)
        try:
            async with running_cli("-F", f"tcp:{s1.host}:{s1.port}:1,tcp:{s2.host}:{s2.port}:1", "--dbus", dbus_address,
                                   "--settings", str(tmp_path / "settings.json")) as proc:
                await observer.wait_name(charger, timeout=30)
                await observer.wait_name(meter, timeout=30)
                await observer.wait_for(charger, "/Connected", lambda v: v == 1, timeout=20)
                assert await observer.get(charger, "/ProductName") == "EV Charging Station"
                assert await observer.get(charger, "/Mode") == 1
                assert await observer.set(charger, "/SetCurrent", 99) != 0  # outside 0..32: refused
                for path, value in (("/Mode", 0), ("/SetCurrent", 12), ("/StartStop", 1)):
                    assert await observer.set(charger, path, value) == 0
                await observer.wait_for(charger, "/Ac/Power", lambda v: v == 3 * 230 * 12, timeout=20)
                assert evcs.holding[5009] == 0 and evcs.holding[5016] == 12 and evcs.holding[5010] == 1
                assert await observer.get(charger, "/Status") == 2
                # the charger's own name is the service's; a new one is written to the charger
                await observer.wait_for(charger, "/CustomName", lambda v: v == "Carport", timeout=20)
                assert await observer.set(charger, "/CustomName", "Garage Süd") == 0
                for _ in range(200):
                    if evcs.name_text == "Garage Süd":
                        break
                    await anyio.sleep(0.05)
                assert evcs.name_text == "Garage Süd"
                await observer.wait_for(charger, "/CustomName", lambda v: v == "Garage Süd", timeout=20)

                await observer.wait_for(meter, "/Ac/L3/Power", lambda v: v == pytest.approx(700.0), timeout=20)
                assert await observer.get(meter, "/ProductId") == 0xB017
                assert await observer.set(meter, "/PhaseConfig", 3) == 0
                await observer.wait_for(meter, "/NrOfPhases", lambda v: v == 1, timeout=20)
                assert em24.holding[0x1002] == 3
                with pytest.raises(LookupError):
                    await observer.get(meter, "/Ac/L2/Power")
                assert await observer.get(meter, "/Ac/L1/Power") == pytest.approx(500.0)
                proc.terminate()
                code, _out, err = await finish(proc)
        finally:
            observer.close()
    assert code == 0, err
    assert "Traceback" not in err
