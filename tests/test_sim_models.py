"""Simulated devices: register maps as on hardware, and physics that respond to writes."""

from __future__ import annotations

import asyncio
import struct

import pytest

from fixtures_sim import RawSerial
from mbclient.modbus.framing import rtu_frame, rtu_unframe
from mbclient.modbus.pdu import Request
from mbclient.sim import HOLDING, INPUT, Battery, SimBus, Site, SunCurve, growatt_min, sdm72d, sdm120, sdm230, sdm630
from mbclient.sim.models import SDM630_CODE, SDM72D_V2_CODE, f32_regs


def ask(unit, request: Request) -> bytes:
    """The reply PDU a unit gives to a request (no wire involved)."""
    reply = unit.respond(request.pdu)
    assert reply is not None
    return reply.pdu


def f32(pdu: bytes, index: int = 0) -> float:
    return struct.unpack(">f", pdu[2 + 4 * index : 6 + 4 * index])[0]


def test_single_phase_meters_refuse_three_phase_registers():
    for meter in (sdm230(2), sdm120(1)):
        assert ask(meter, Request.read(4, 0x0000, 2)) != bytes((0x84, 2))
        for addr in (0x0002, 0x0004, 0x0034):
            assert ask(meter, Request.read(4, addr, 2)) == bytes((0x84, 2)), (meter.model, hex(addr))
        assert ask(meter, Request.read(4, 0x0000, 8)) == bytes((0x84, 2))  # bridging the hole


def test_identity_registers_tell_the_family_apart():
    m230, m630, m72 = sdm230(2, serial=4242), sdm630(3), sdm72d(4)
    assert Request.read(3, 0xFC00, 3).check_reply(ask(m230, Request.read(3, 0xFC00, 3))) == [0, 4242, 0]
    assert ask(m630, Request.read(3, 0xFC02, 1))[2:] == struct.pack(">H", SDM630_CODE)
    assert ask(m72, Request.read(3, 0xFC02, 1))[2:] == struct.pack(">H", SDM72D_V2_CODE)
    assert ask(sdm230(2, meter_code=None), Request.read(3, 0xFC02, 1)) == bytes((0x83, 2))
    # Baud code 2.0 (9600) is a float at holding 0x001C on every model: not an identity.
    for m in (m230, m630, m72):
        assert f32(ask(m, Request.read(3, 0x001C, 2))) == 2.0
    assert ask(growatt_min(1), Request.read(3, 0xFC00, 2)) == bytes((0x83, 2))


def test_three_phase_meter_has_every_phase():
    m = sdm630(1)
    m.measure([100.0, -200.0, 300.0], voltage=[230.0, 231.0, 232.0])
    pdu = ask(m, Request.read(4, 0x0000, 18))
    values = [f32(pdu, i) for i in range(9)]
    assert values[0:3] == [230.0, 231.0, 232.0]
    assert values[3:6] == pytest.approx([100 / 230, 200 / 231, 300 / 232], rel=1e-5)
    assert values[6:9] == [100.0, -200.0, 300.0]
    assert f32(ask(m, Request.read(4, 0x0034, 2))) == pytest.approx(200.0)
    v1 = sdm72d(1, version=1)
    assert ask(v1, Request.read(4, 0x0000, 2)) == bytes((0x84, 2))
    assert ask(v1, Request.read(4, 0x0034, 2))[0] == 4


def test_meter_energy_integrates_import_and_export():
    m = sdm230(2)
    m.measure(3600.0)
    m.advance(1000.0)  # 3600 W for 1000 s = 1 kWh imported
    m.measure(-1800.0)
    m.advance(1000.0)
    pdu = ask(m, Request.read(4, 0x0048, 4))
    assert (f32(pdu, 0), f32(pdu, 1)) == (pytest.approx(1.0), pytest.approx(0.5))
    assert f32(ask(m, Request.read(4, 0x000C, 2))) == -1800.0


def test_meter_parameters_are_written_whole_and_in_range():
    m = sdm230(2)
    assert ask(m, Request.write_multiple(0x001C, f32_regs(1.0)))[0] == 16
    assert m.baud_code == 1
    assert ask(m, Request.write_multiple(0x001C, f32_regs(3.0))) == bytes((0x90, 3))  # no 19200 on SDM230
    assert ask(m, Request.write_multiple(0x001D, [0])) == bytes((0x90, 2))  # half a float
    assert ask(m, Request.write_multiple(0x0000, f32_regs(1.0))) == bytes((0x90, 2))
    assert ask(m, Request.write_single(0x001C, 0x4000)) == bytes((0x86, 2))  # fc 6: not one whole parameter
    assert [a for _, _, a, _ in m.write_log] == [0x001C]


def test_growatt_register_map():
    g = growatt_min(1, serial="ABC0123456789", rated_w=3600)
    regs = Request.read(3, 0, 125).check_reply(ask(g, Request.read(3, 0, 125)))
    assert regs[2:4] == [0, 255]  # memory state off, no limit
    assert (regs[6] << 16 | regs[7]) == 36000  # Pmax 3600.0 VA
    assert regs[43:45] == [5100, 0x0201]
    assert bytes(b for r in regs[9:12] for b in r.to_bytes(2, "big")) == b"DH1.0 "
    serial = ask(g, Request.read(3, 209, 15))[2:].decode().strip()
    assert serial == "ABC0123456789"
    assert ask(g, Request.read(3, 3000, 1))[0] == 3
    assert ask(g, Request.read(3, 124, 2)) == bytes((0x83, 2))  # 125 does not exist
    assert ask(g, Request.read(4, 0, 125))[0] == 4
    assert ask(g, Request.read(4, 125, 1)) == bytes((0x84, 2))


def test_growatt_writes_follow_the_map():
    g = growatt_min(1)
    for value in (0, 37, 100, 255):
        assert ask(g, Request.write_single(3, value))[0] == 6
    for value in (101, 254, 0xFFFF):
        assert ask(g, Request.write_single(3, value)) == bytes((0x86, 3))
    assert ask(g, Request.write_single(43, 1)) == bytes((0x86, 2))  # DTC is read-only
    assert ask(g, Request.write_single(123, (-1000) & 0xFFFF))[0] == 6
    assert ask(g, Request.write_single(123, 1001)) == bytes((0x86, 3))
    assert ask(g, Request.write_single(3000, 876))[0] == 6
    refused = []
    g.on_write = lambda addr, values: refused.append(addr) or 4
    assert ask(g, Request.write_single(3, 50)) == bytes((0x86, 4))
    assert g.holding[3] == 255 and refused == [3]


def make_site(**kw) -> Site:
    bus = SimBus()
    inv = bus.add(growatt_min(1))
    meter = bus.add(sdm230(2))
    site = Site(inv, meter, live=False, **kw)
    site.bus = bus
    return site


def test_growatt_output_follows_the_rate_register_with_a_lag():
    site = make_site()
    site.sun_w, site.load_w = 4000.0, 500.0
    site.step(30.0)
    inv = site.inverter
    assert inv.output_w == pytest.approx(4000.0, abs=1)
    assert site.grid_w == pytest.approx(-3500.0, abs=1)
    assert ask(inv, Request.write_single(3, 50))[0] == 6
    assert Request.read(4, 101, 3).check_reply(ask(inv, Request.read(4, 101, 3))) == [50, 0, 21000]
    site.step(0.5)  # tau 1 s: about 40 % of the way from 4000 W to 2100 W
    assert 2600 < inv.output_w < 3600
    site.step(10.0)
    assert inv.output_w == pytest.approx(2100.0, abs=1)
    pac = Request.read(4, 35, 2).check_reply(ask(inv, Request.read(4, 35, 2)))
    assert (pac[0] << 16 | pac[1]) == pytest.approx(21000, abs=10)
    assert f32(ask(site.meter, Request.read(4, 0x000C, 2))) == pytest.approx(500.0 - 2100.0, abs=1)
    assert ask(inv, Request.read(4, 104, 1))[2:] == struct.pack(">H", 7)  # derated by command


def test_inverter_sleeps_at_night_and_forgets_its_limit_at_dawn():
    site = make_site()
    inv = site.inverter
    site.sun_w = 3000.0
    assert ask(inv, Request.write_single(3, 30))[0] == 6
    site.night = True
    site.step(0.1)
    assert inv.asleep and inv.respond(Request.read(4, 0, 1).pdu) is None
    assert site.grid_w == pytest.approx(400.0)
    site.night = False
    site.step(0.1)
    assert not inv.asleep and inv.holding[3] == 255  # holding 2 = 0: not remembered
    inv.holding[2] = 1
    inv.holding[3] = 30
    site.night = True
    site.step(0.1)
    site.night = False
    site.step(0.1)
    assert inv.holding[3] == 30


def test_a_day_in_minutes_is_deterministic():
    def run(seed: int) -> tuple[float, ...]:
        site = make_site(
            sun=SunCurve(peak_w=4600.0, clouds=0.3), battery=Battery(soc=40.0), start_hour=4.0,
            time_scale=600.0, seed=seed, load_steps=((0.0, 300.0), (7.0, 1500.0), (9.0, 400.0), (18.0, 2000.0)),
        )
        sleeps = []
        for _ in range(1440):  # 24 h at 600x: 144 real seconds in 0.1 s steps
            site.step(0.1)
            sleeps.append(site.inverter.asleep)
        inv = site.inverter
        assert sleeps[0] and not sleeps[600] and sleeps[-1]  # asleep 4:00, up 14:00, down 4:00
        assert site.sleeps == 2  # at construction (4:00) and at dusk
        assert inv.eac_today == pytest.approx(inv.eac_total) and inv.eac_total > 10.0
        return (inv.eac_total, site.meter.import_kwh[0], site.meter.export_kwh[0], site.battery.soc)

    a, b = run(7), run(7)
    assert a == b
    assert run(8) != a


def test_battery_charges_from_surplus_and_shows_on_the_meter():
    site = make_site(battery=Battery(soc=50.0, max_charge_w=1000.0))
    site.sun_w, site.load_w = 3000.0, 500.0
    site.step(30.0)
    assert site.battery.power == pytest.approx(1000.0, abs=1)
    assert site.grid_w == pytest.approx(500.0 + 1000.0 - 3000.0, abs=1)
    assert site.battery.soc > 50.0 and site.battery.charge_state == 3


@pytest.mark.asyncio
async def test_rate_write_on_the_wire_curtails_the_export_the_meter_reads(running_site: Site, raw_serial: RawSerial):
    async def read_meter_power() -> float:
        raw_serial.send(rtu_frame(2, Request.read(4, 0x000C, 2).pdu))
        unit, pdu = rtu_unframe(await raw_serial.recv(9))
        await asyncio.sleep(0.005)
        return f32(pdu)

    running_site.inverter.tau = 0.2
    assert await read_meter_power() == pytest.approx(-2200.0, abs=5)
    raw_serial.send(rtu_frame(1, Request.write_single(3, 10).pdu))  # 420 W
    assert len(await raw_serial.recv(8)) == 8
    await asyncio.sleep(0.005)
    power = await read_meter_power()
    assert power > -2200.0  # already moving: the meter samples the lagging output
    await asyncio.sleep(5 * running_site.inverter.tau)
    assert await read_meter_power() == pytest.approx(800.0 - 420.0, abs=20)
    assert running_site.bus is not None and running_site.bus.collisions == 0
    assert running_site.inverter.get_u16(HOLDING, 3) == 10
    assert running_site.inverter.get_u16(INPUT, 101) == 10
