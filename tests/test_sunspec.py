"""SunSpec: discovery, values and limiting against simulated SunSpec devices.

The simulated devices (``mbclient.sim.sunspec``) are laid out from the SunSpec model
definitions (point order and sizes) and the vendors' documents; the expected values below
are the simulator's truth (what it was told to hold, in physical units), never read from
``mbclient/devices/sunspec_models/points.toml``.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import AsyncIterator

import pytest

from mbclient.devices import DeviceOptions, get_model, identify, sunspec
from mbclient.errors import ConfigError
from mbclient.items import ItemStore
from mbclient.sim import growatt_min, sdm230, serve_rtu, serve_tcp
from mbclient.sim.bus import SimBus
from mbclient.sim.sunspec import (
    GRID_A,
    GRID_EXPORT_WH,
    GRID_IMPORT_WH,
    GRID_V,
    GRID_W,
    SunSpecUnit,
    der_device,
    float_device,
    fronius_like,
    sma_like,
    solaredge_like,
)
from mbclient.spec import parse_spec
from mbclient.transports import LinkPool
from mbclient.transports.base import UnitClient

pytestmark = [pytest.mark.asyncio, pytest.mark.timeout(30)]


@contextlib.asynccontextmanager
async def tcp(*units: SunSpecUnit) -> AsyncIterator[tuple[LinkPool, int]]:
    async with serve_tcp(list(units), turnaround=False) as server:
        pool = LinkPool()
        try:
            yield pool, server.port
        finally:
            await pool.aclose()


async def driver(pool: LinkPool, port: int, unit: int, index: int = 1, model: str = "sunspec",
                 host: str = "127.0.0.1", method: str = "tcp", **opts: object):
    spec = parse_spec(f"{method}:{host}:{port}:{unit}:{model}" + (f"@{index}" if index > 1 else ""))
    client = UnitClient(pool.get(spec), unit)
    store = ItemStore()
    d = get_model(model).create(client, store, DeviceOptions(index=spec.index, **opts))  # type: ignore[arg-type]
    identity = await d.read_identity()
    d.add_items()
    await d.poll(time.monotonic())
    return d, store, identity


def close(a: float | None, b: float, tol: float = 1e-3) -> bool:
    return a is not None and abs(a - b) <= tol * max(1.0, abs(b))


# --- discovery -------------------------------------------------------------------------------------


async def test_chains_split_into_their_devices() -> None:
    units = [fronius_like(1), sma_like(126), solaredge_like(5), der_device(3), float_device(2)]
    async with tcp(*units) as (pool, port):
        found = {}
        for u in units:
            client = UnitClient(pool.get(parse_spec(f"tcp:127.0.0.1:{port}:{u.address}")), u.address)
            found[u.address] = [(d.main.id, d.kind, d.sharing) for d in await sunspec.discover(client, 1.0)]
    assert found[1] == [(103, "inverter", 1), (203, "meter", 2)]  # meter shares the inverter's model 1
    assert found[126] == [(103, "inverter", 1)]  # no end model: the exception ends the chain
    assert found[5] == [(103, "inverter", 1), (203, "meter", 1)]  # the meter's own (repeated) model 1
    assert found[3] == [(701, "inverter", 1)]  # marker at 50000
    assert found[2] == [(111, "inverter", 1), (213, "meter", 2)]


async def test_extras_belong_to_their_inverter_and_chain_addresses_follow_the_definitions() -> None:
    u = fronius_like(1)
    async with tcp(u) as (pool, port):
        client = UnitClient(pool.get(parse_spec(f"tcp:127.0.0.1:{port}:1")), 1)
        inv, meter = await sunspec.discover(client, 1.0)
    assert [m.id for m in inv.extras] == [120, 123, 160]
    assert meter.extras == ()
    # the simulator placed the models from the definitions' point sizes
    assert inv.main.address == u.model(103).address == 40070
    assert meter.main.address == u.model(203).address
    assert inv.common is not None and inv.common.address == 40002


async def test_detection_claims_sunspec_units_only() -> None:
    bus = SimBus(units=[fronius_like(1), growatt_min(2), sdm230(3), sma_like(126)])
    async with serve_tcp(bus, turnaround=False) as server:
        pool = LinkPool()
        try:
            def client(unit: int) -> UnitClient:
                return UnitClient(pool.get(parse_spec(f"tcp:127.0.0.1:{server.port}:{unit}")), unit)
            assert await sunspec.detect(client(2), 0.5) is None
            assert await sunspec.detect(client(3), 0.5) is None
            assert (await identify(client(1), timeout=0.5)).name == "sunspec_inverter"
            assert (await identify(client(126), timeout=0.5)).name == "sunspec_inverter"
            assert (await identify(client(2), timeout=0.5)).name == "growatt_min"
        finally:
            await pool.aclose()


async def test_spec_device_index() -> None:
    spec = parse_spec("tcp:10.0.0.5:502:1:sunspec@2")
    assert (spec.model, spec.index) == ("sunspec", 2)
    assert str(spec) == "tcp:10.0.0.5:502:1:sunspec@2"
    assert parse_spec("tcp:10.0.0.5:502:1:sunspec").index == 1
    for bad in ("tcp:10.0.0.5:502:1:@2", "tcp:10.0.0.5:502:1:sunspec@0", "tcp:10.0.0.5:502:1:sunspec@x"):
        with pytest.raises(ConfigError):
            parse_spec(bad)
    from mbclient.devices import check_index
    with pytest.raises(ConfigError):
        check_index(get_model("sdm230"), 2)
    check_index(get_model("sunspec"), 2)


# --- values --------------------------------------------------------------------------------------


async def test_fronius_inverter_and_its_meter_publish_the_simulated_truth() -> None:
    u = fronius_like(1, rated_w=8200)
    u.available_w = 6000.0
    u.start_physics()
    async with tcp(u) as (pool, port):
        inv, s, ident = await driver(pool, port, 1)
        meter, m, mident = await driver(pool, port, 1, index=2)
    assert (inv.model.name, meter.model.name) == ("sunspec_inverter", "sunspec_meter")
    assert ident.serial == "31234567" and mident.serial == "31234567_2"
    assert ident.product_name == "Fronius Symo 8.2-3-M" and ident.firmware == "1.12.4-1"
    assert mident.product_name == "Fronius energy meter (SunSpec 203)"  # not the inverter's model name
    assert s.get("/Ac/Power") == 6000.0
    amps = [u.get(u.model(103), f"Aph{p}") for p in "ABC"]
    for n, ph in enumerate("ABC", 1):
        assert close(s.get(f"/Ac/L{n}/Current"), amps[n - 1])
        assert close(s.get(f"/Ac/L{n}/Power"), 2000.0)
    assert [s.get(f"/Ac/L{n}/Voltage") for n in (1, 2, 3)] == [231.5, 229.8, 232.1]
    assert s.get("/Ac/Frequency") == 50.02
    assert s.get("/Ac/Energy/Forward") == 12345.678
    assert s.get("/Ac/MaxPower") == 8200.0
    assert s.get("/StatusCode") == 11  # MPPT -> Running (MPPT)
    assert s.get("/NrOfPhases") == 3
    assert s.get("/Internal/InverterTemp") == 41.5
    assert (s.get("/Internal/Pv/0/V"), s.get("/Internal/Pv/0/I"), s.get("/Internal/Pv/0/P")) == (612.3, 4.21, 2578.0)
    assert (s.get("/Internal/Pv/1/V"), s.get("/Internal/Pv/1/Energy/Total")) == (598.7, 3500.0)
    assert "/Internal/Pv/2/V" not in s
    # the meter: Victron's sign (import positive) - Fronius reports it that way
    assert m.get("/Ac/Power") == sum(GRID_W)
    for n in range(3):
        assert m.get(f"/Ac/L{n + 1}/Power") == GRID_W[n]
        assert m.get(f"/Ac/L{n + 1}/Voltage") == GRID_V[n]
        assert m.get(f"/Ac/L{n + 1}/Current") == GRID_A[n]
        assert m.get(f"/Ac/L{n + 1}/Energy/Forward") == GRID_IMPORT_WH[n] / 1000
        assert m.get(f"/Ac/L{n + 1}/Energy/Reverse") == GRID_EXPORT_WH[n] / 1000
    assert m.get("/Ac/Energy/Forward") == sum(GRID_IMPORT_WH) / 1000
    assert m.get("/Ac/Energy/Reverse") == sum(GRID_EXPORT_WH) / 1000
    assert m.get("/Ac/Frequency") == 50.01
    assert m.get("/NrOfPhases") == 3
    assert meter.limiter is None and "/Ac/PowerLimit" not in m


async def test_solaredge_meter_is_negated_to_victrons_sign() -> None:
    u = solaredge_like(5)
    async with tcp(u) as (pool, port):
        _, m, ident = await driver(pool, port, 5, index=2, model="sunspec_meter")
    assert ident.serial == "M0042"  # its own model 1
    assert u.get(u.model(203), "W") == -sum(GRID_W)  # the device says export positive
    assert m.get("/Ac/Power") == sum(GRID_W)
    assert [m.get(f"/Ac/L{n}/Power") for n in (1, 2, 3)] == list(GRID_W)


async def test_float_models() -> None:
    u = float_device(2)
    u.available_w = 3210.0
    u.start_physics()
    async with tcp(u) as (pool, port):
        inv, s, _ = await driver(pool, port, 2)
        _, m, _ = await driver(pool, port, 2, index=2)
    assert s.get("/NrOfPhases") == 1
    assert s.get("/Ac/Power") == 3210.0 and s.get("/Ac/L1/Power") == 3210.0
    assert close(s.get("/Ac/L1/Voltage"), 229.5, 1e-6) and close(s.get("/Ac/Frequency"), 49.98, 1e-6)
    assert close(s.get("/Ac/Energy/Forward"), 7654.321, 1e-6)
    assert s.get("/Ac/L1/Energy/Forward") == s.get("/Ac/Energy/Forward")
    assert "/Ac/L2/Voltage" not in s
    assert s.get("/Ac/MaxPower") == 5000.0
    assert inv.limiter is not None and not inv.limiter.enabled  # no 123/704: no limiting
    assert s.get("/Ac/PowerLimit") is None
    for n in range(3):
        assert close(m.get(f"/Ac/L{n + 1}/Power"), GRID_W[n], 1e-6)
        assert close(m.get(f"/Ac/L{n + 1}/Voltage"), GRID_V[n], 1e-6)
    assert close(m.get("/Ac/Energy/Forward"), sum(GRID_IMPORT_WH) / 1000, 1e-6)


async def test_der_701_three_phase_from_actype() -> None:
    u = der_device(3, rated_w=10000)
    u.available_w = 7500.0
    u.start_physics()
    async with tcp(u) as (pool, port):
        inv, s, _ = await driver(pool, port, 3)
    assert s.get("/NrOfPhases") == 3
    assert s.get("/Ac/Power") == 7500.0
    assert [s.get(f"/Ac/L{n}/Power") for n in (1, 2, 3)] == [2500.0] * 3
    assert [s.get(f"/Ac/L{n}/Voltage") for n in (1, 2, 3)] == [230.4, 231.0, 229.6]
    assert s.get("/Ac/Frequency") == 50.012
    assert s.get("/Ac/Energy/Forward") == 6000.0
    assert [s.get(f"/Ac/L{n}/Energy/Forward") for n in (1, 2, 3)] == [1000.0, 2000.0, 3000.0]
    assert s.get("/Ac/MaxPower") == 10000.0
    assert s.get("/StatusCode") == 11


async def test_not_implemented_points_are_invalid() -> None:
    u = fronius_like(1)
    u.set_raw(u.model(103), "W_SF", -0x8000)  # scale factor not implemented
    u.set_raw(u.model(103), "PhVphC", 0xFFFF)  # u16 not implemented
    u.set_raw(u.model(103), "WH", 0)  # acc32: 0 = not accumulated
    async with tcp(u) as (pool, port):
        _, s, _ = await driver(pool, port, 1)
    assert s.get("/Ac/Power") is None
    assert s.get("/Ac/L3/Voltage") is None and s.get("/Ac/L1/Voltage") == 231.5
    assert s.get("/Ac/Energy/Forward") is None


async def test_fronius_null_frames_keep_the_last_values() -> None:
    u = fronius_like(1)
    u.available_w = 4000.0
    u.start_physics()
    async with tcp(u) as (pool, port):
        inv, s, _ = await driver(pool, port, 1)
        assert s.get("/Ac/Power") == 4000.0
        for kind in ("zeros", "ones"):
            u.null_frame = kind
            for sb in inv.schedule:
                sb.next_due = 0.0
            await inv.poll(time.monotonic())
            assert s.get("/Ac/Power") == 4000.0  # kept, not 0 W nor invalid
            assert s.get("/Ac/Energy/Forward") == 12345.678
            assert s.get("/StatusCode") == 11
        assert inv.null_frames >= 2 and s.get("/Internal/NullFrames") == inv.null_frames
        u.null_frame = None
        u.available_w = 3000.0
        for sb in inv.schedule:
            sb.next_due = 0.0
        await inv.poll(time.monotonic())
        assert s.get("/Ac/Power") == 3000.0


async def test_null_frames_for_too_long_count_as_silence(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sunspec, "NULL_FRAME_PATIENCE", 0.0)
    u = fronius_like(1)
    u.start_physics()
    async with tcp(u) as (pool, port):
        inv, _, _ = await driver(pool, port, 1)
        u.null_frame = "zeros"
        for sb in inv.schedule:
            sb.next_due = 0.0
        with pytest.raises(sunspec.NullFrame):
            await inv.poll(time.monotonic())


async def test_over_rs485_as_over_tcp(tmp_path) -> None:
    u = fronius_like(1)
    u.available_w = 2500.0
    u.start_physics()
    async with serve_rtu(SimBus(115200, units=[u]), directory=tmp_path) as port:
        pool = LinkPool()
        try:
            spec = parse_spec(f"rtu:{port.path}:115200:1:sunspec@2")
            client = UnitClient(pool.get(spec), 1)
            store = ItemStore()
            meter = get_model("sunspec").create(client, store, DeviceOptions(index=2))
            await meter.read_identity()
            meter.add_items()
            await meter.poll(time.monotonic())
            assert store.get("/Ac/Power") == sum(GRID_W)
        finally:
            await pool.aclose()


# --- limiting --------------------------------------------------------------------------------------


async def test_model_123_limit_written_read_back_refreshed_and_released(monkeypatch: pytest.MonkeyPatch) -> None:
    u = fronius_like(1, rated_w=8200)
    u.available_w = 8000.0
    u.start_physics()
    async with tcp(u) as (pool, port):
        inv, s, _ = await driver(pool, port, 1)
        ctl = u.model(123)
        lim = inv.limiter
        assert lim.enabled and lim.max_power == 8200.0
        assert s.write("/Ac/PowerLimit", 4100.0) == 0
        await inv.service_writes(time.monotonic())
        # percent of WMax with the model's scale factor (-2), revert timer set, enabled
        assert u.get(ctl, "WMaxLimPct") == 50.0 and u.get(ctl, "WMaxLim_Ena") == 1
        assert u.get(ctl, "WMaxLimPct_RvrtTms") == sunspec.REVERT_SECONDS
        assert u.output_w() == 4100.0
        assert s.get("/Ac/PowerLimit") == 4100.0
        # over limits are refused, the store keeps the last one
        assert s.write("/Ac/PowerLimit", 9000.0) != 0
        # renewed before the device's revert timer runs out
        writes = len(u.write_log)
        monkeypatch.setattr(sunspec, "REFRESH_SECONDS", 0.0)
        assert inv.writes_deadline(time.monotonic()) <= time.monotonic()
        await inv.service_writes(time.monotonic())
        assert len(u.write_log) == writes + 1 and u.write_log[-1][2] == ctl.addr("WMaxLimPct")
        monkeypatch.setattr(sunspec, "REFRESH_SECONDS", 60.0)
        # a device that forgot the limit (restart) is corrected from the read-back
        u.set_raw(ctl, "WMaxLim_Ena", 0)
        for sb in inv.schedule:
            sb.next_due = 0.0
        await inv.poll(time.monotonic())
        await inv.service_writes(time.monotonic())
        assert u.get(ctl, "WMaxLim_Ena") == 1
        # released on stop: enable flag off, full power
        await inv.release()
        assert u.get(ctl, "WMaxLim_Ena") == 0 and u.output_w() == 8000.0


async def test_model_123_revert_timer_returns_full_power_when_not_renewed() -> None:
    u = fronius_like(1, rated_w=8200)
    u.available_w = 8000.0
    u.start_physics()
    now = [time.monotonic()]
    u.clock = lambda: now[0]
    async with tcp(u) as (pool, port):
        inv, s, _ = await driver(pool, port, 1)
        s.write("/Ac/PowerLimit", 2050.0)
        await inv.service_writes(time.monotonic())
        assert u.output_w() == 2050.0
        now[0] += sunspec.REVERT_SECONDS + 1
        assert u.output_w() == 8000.0  # the device's own fail-safe


async def test_sma_writes_only_the_percentage() -> None:
    u = sma_like(126, enabled=True)
    u.available_w = 9000.0
    u.start_physics()
    async with tcp(u) as (pool, port):
        inv, s, _ = await driver(pool, port, 126)
        assert inv.limiter.enabled
        assert s.write("/Ac/PowerLimit", 6000.0) == 0
        await inv.service_writes(time.monotonic())
        assert u.get(u.model(123), "WMaxLimPct") == 60.0 and u.output_w() == 6000.0
        assert {addr for _, _, addr, _ in u.write_log} == {u.model(123).addr("WMaxLimPct")}
        await inv.release()
        assert u.get(u.model(123), "WMaxLimPct") == 100.0 and u.output_w() == 9000.0
        assert {addr for _, _, addr, _ in u.write_log} == {u.model(123).addr("WMaxLimPct")}


async def test_sma_with_limitation_off_is_not_limited() -> None:
    u = sma_like(126, enabled=False)
    u.start_physics()
    async with tcp(u) as (pool, port):
        inv, s, _ = await driver(pool, port, 126)
    assert not inv.limiter.enabled and "enable" in inv.limiter.reason
    assert s.get("/Ac/PowerLimit") is None
    assert not u.write_log


async def test_model_704_limit() -> None:
    u = der_device(3, rated_w=10000)
    u.available_w = 9000.0
    u.start_physics()
    async with tcp(u) as (pool, port):
        inv, s, _ = await driver(pool, port, 3)
        ctl = u.model(704)
        assert s.write("/Ac/PowerLimit", 2500.0) == 0
        await inv.service_writes(time.monotonic())
        assert u.get(ctl, "WMaxLimPctEna") == 1 and u.get(ctl, "WMaxLimPct") == 25.0
        # reverts to no limit: 100 %, disabled, after the timer
        assert u.get(ctl, "WMaxLimPctRvrt") == 100.0 and u.get(ctl, "WMaxLimPctEnaRvrt") == 0
        assert u.get(ctl, "WMaxLimPctRvrtTms") == sunspec.REVERT_SECONDS
        assert u.output_w() == 2500.0 and s.get("/Ac/PowerLimit") == 2500.0
        for sb in inv.schedule:
            sb.next_due = 0.0
        await inv.poll(time.monotonic())
        assert s.get("/Ac/Power") == 2500.0
        await inv.release()
        assert u.get(ctl, "WMaxLimPctEna") == 0 and u.output_w() == 9000.0


async def test_wrong_kind_or_index_is_a_clear_error() -> None:
    async with tcp(fronius_like(1)) as (pool, port):
        with pytest.raises(sunspec.NotInChain, match="meter"):
            await driver(pool, port, 1, index=2, model="sunspec_inverter")
        with pytest.raises(sunspec.NotInChain, match="holds 2"):
            await driver(pool, port, 1, index=3)


async def test_solaredge_is_limited_through_its_own_power_control() -> None:
    u = solaredge_like(5, rated_w=8000.0)
    u.available_w = 7000.0
    u.start_physics()
    e = u.EDPC
    async with tcp(u) as (pool, port):
        inv, s, _ = await driver(pool, port, 5)
        assert inv.limiter.enabled and s.get("/Ac/MaxPower") == 8000.0  # from its max power register
        assert not u.write_log  # nothing written before a limit is asked for
        assert s.write("/Ac/PowerLimit", 2000.0) == 0
        await inv.service_writes(time.monotonic())
        assert u.holding[e["enable"]] == 1 and u.get_u32le(e["timeout"]) == sunspec.REVERT_SECONDS
        assert u.get_f32le(e["fallback"]) == 100.0
        assert u.get_f32le(e["ramp_up"]) == -1.0 and u.get_f32le(e["ramp_down"]) == -1.0
        assert u.get_f32le(e["limit"]) == 25.0 and u.output_w() == 2000.0
        assert s.get("/Ac/PowerLimit") == 2000.0
        await inv.release()
        assert u.get_f32le(e["limit"]) == 100.0 and u.output_w() == 7000.0


async def test_two_inverters_behind_one_address_each_with_their_own_extras() -> None:
    """A data manager answering for two inverters on one unit: each inverter keeps the
    rating and controls that follow it, and each is its own device with its own serial."""
    u = SunSpecUnit(7, [1, 103, 120, 123, 1, 101, 120, 123])
    u.common(1, mn="Fronius", md="Symo 5.0-3-M", sn="INV-A")
    u.common(2, mn="Fronius", md="Primo 3.0-1", sn="INV-B")
    for nth, rating in ((1, 5000), (2, 3000)):
        npl = u.model(120, nth)
        u.set_sf(npl, "WRtg_SF", 0)
        u.set(npl, "WRtg", rating)
        ctl = u.model(123, nth)
        u.set_sf(ctl, "WMaxLimPct_SF", 0)
        u.set_raw(ctl, "WMaxLim_Ena", 0)
        for p in ("WMaxLimPct", "WMaxLimPct_WinTms", "WMaxLimPct_RvrtTms", "WMaxLimPct_RmpTms", "WMaxLim_Ena"):
            u.allow_write(ctl.addr(p))
    async with tcp(u) as (pool, port):
        a, sa, ia = await driver(pool, port, 7)
        b, sb, ib = await driver(pool, port, 7, index=2)
        assert (ia.serial, ib.serial) == ("INV-A", "INV-B")
        assert (sa.get("/NrOfPhases"), sb.get("/NrOfPhases")) == (3, 1)
        assert (sa.get("/Ac/MaxPower"), sb.get("/Ac/MaxPower")) == (5000.0, 3000.0)
        assert sb.write("/Ac/PowerLimit", 1500.0) == 0
        await b.service_writes(time.monotonic())
    assert u.get(u.model(123, 2), "WMaxLimPct") == 50.0 and u.get(u.model(123, 2), "WMaxLim_Ena") == 1
    assert u.get(u.model(123, 1), "WMaxLim_Ena") == 0  # the other inverter untouched


async def test_a_short_model_publishes_only_the_points_it_holds() -> None:
    """A device whose 103 is shorter than the definition (an older layout) must not read
    the next model's registers as its points."""
    u = fronius_like(1)
    u.start_physics()
    inv = u.model(103)
    u.holding[inv.address + 1] = 30  # L = 30: up to DCV_SF, no temperatures, no St
    async with tcp(u) as (pool, port):
        # the walk goes on after the short 103 where its L says: inside the old layout,
        # where nothing is a meter model any more
        with pytest.raises(sunspec.NotInChain, match="holds 1"):
            await driver(pool, port, 1, index=2)
        # ... but the inverter itself is read within its 30 registers
        _, s, _ = await driver(pool, port, 1)
    assert s.get("/Ac/L1/Voltage") == 231.5
    assert "/StatusCode" not in s and "/Internal/InverterTemp" not in s

