"""The simulated RS-485 bus behind a real pseudo-terminal, driven with raw bytes.

What a client relies on: replies never come sooner than the wire allows, talking over
the line is noticed, silent units are silent, faults look like real line faults, and a
pulled adapter disappears and comes back under the same name.
"""

from __future__ import annotations

import asyncio
import os
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fixtures_sim import RawSerial
from mbclient.errors import FrameError
from mbclient.modbus.framing import ascii_frame, ascii_unframe, rtu_frame, rtu_unframe
from mbclient.modbus.pdu import Request
from mbclient.sim import SerialLine, SimBus, SimSerialPort, SimUnit, serve_rtu

# Tolerance for "never earlier than the model": timer and clock granularity only.
EARLY = 0.001


def read_req(unit: int, fc: int, addr: int, count: int) -> bytes:
    return rtu_frame(unit, Request.read(fc, addr, count).pdu)


def reply_len(count: int) -> int:
    return 5 + 2 * count


async def transact(raw: RawSerial, frame: bytes, n: int, timeout: float = 2.0) -> tuple[bytes, float]:
    t0 = raw.send(frame)
    data = await raw.recv(n, timeout)
    return data, raw.last_rx - t0


@pytest.mark.asyncio
async def test_reply_takes_request_turnaround_and_reply_wire_time(sim_bus: SimBus, raw_serial: RawSerial):
    for unit, count in ((2, 2), (1, 100)):  # SDM230 voltage; the Growatt's input block
        data, elapsed = await transact(raw_serial, read_req(unit, 4, 0, count), reply_len(count))
        assert rtu_unframe(data)[0] == unit
        if unit == 2:
            assert struct.unpack(">f", data[3:7])[0] == pytest.approx(230.0)
        model = sim_bus.wire_time(8) + sim_bus[unit].turnaround + sim_bus.wire_time(reply_len(count))
        assert elapsed >= model - EARLY
        await asyncio.sleep(0.01)
    # 0x0000..0x0025 on an SDM230 spans the three-phase-only 0x0002/0x0004: exception 2.
    data, _ = await transact(raw_serial, read_req(2, 4, 0, 6), 5)
    assert rtu_unframe(data) == (2, bytes((0x84, 2)))


@pytest.mark.asyncio
async def test_sequential_master_leaves_no_collision_and_gaps_are_recorded(sim_bus: SimBus, raw_serial: RawSerial):
    for _ in range(5):
        for unit, fc, count in ((2, 4, 2), (1, 4, 10), (1, 3, 2)):
            data, _ = await transact(raw_serial, read_req(unit, fc, 0 if unit == 2 else 35, count), reply_len(count))
            assert rtu_unframe(data)[0] == unit
            await asyncio.sleep(sim_bus.frame_gap + 0.001)
    assert sim_bus.collisions == 0
    assert sim_bus.transactions == 15
    assert sim_bus.min_request_gap is not None and sim_bus.min_request_gap >= sim_bus.frame_gap
    assert sim_bus.min_gap is not None and sim_bus.min_gap >= sim_bus.frame_gap
    kinds = [f.kind for f in sim_bus.frames]
    assert kinds[:2] == ["request", "reply"] and len(kinds) == 30
    assert sim_bus[1].counters.replies == 10 and sim_bus[2].counters.replies == 5


@pytest.mark.asyncio
async def test_request_during_turnaround_or_reply_is_a_collision(sim_bus: SimBus, raw_serial: RawSerial):
    # During the meter's turnaround (a generous 200 ms here, so a slow host still lands in it).
    sim_bus[2].turnaround = 0.200
    raw_serial.send(read_req(2, 4, 0, 2))
    await asyncio.sleep(0.025)  # the request took ~8 ms; the meter is still thinking
    raw_serial.send(read_req(1, 4, 0, 2))
    await raw_serial.quiet(0.4)
    assert sim_bus.collision_kinds["turnaround"] == 1 and sim_bus.collisions == 1
    # During a reply on the wire: the colliding request is lost, the reply garbled.
    sim_bus.reset_stats()
    sim_bus[1].turnaround = 0.005
    heard_before = sim_bus[2].counters.requests
    raw_serial.send(read_req(1, 4, 0, 125))  # 255-byte reply: ~266 ms on the wire
    await asyncio.sleep(0.050)
    raw_serial.send(read_req(2, 4, 0, 2))
    got = await raw_serial.quiet(0.5)
    assert sim_bus.collision_kinds["overlap"] == 1
    assert len(got) == reply_len(125)
    with pytest.raises(FrameError):
        rtu_unframe(got)
    assert sim_bus[2].counters.requests == heard_before  # nobody heard the colliding request
    assert any(f.collided and f.kind == "reply" for f in sim_bus.frames)


@pytest.mark.asyncio
async def test_request_too_soon_after_a_reply_breaks_the_gap_rule():
    """A master that answers the reply's last byte at once (no 3.5-character silence).

    At 600 Bd the gap is 64 ms, so a loop running late on a loaded machine still answers
    well inside it (at 9600 Bd its 3.6 ms were sometimes gone before the callback ran).
    """
    bus = SimBus(600, units=[SimUnit(4, input={0: 1, 1: 2})])
    line = SerialLine(bus)
    replies: list[bytes] = []
    done = asyncio.Event()

    def master(reply: bytes) -> None:
        replies.append(reply)
        if len(replies) == 1:
            line.feed(read_req(4, 4, 0, 2), master)  # straight from the receive callback
        else:
            done.set()

    line.feed(read_req(4, 4, 0, 2), master)
    await asyncio.wait_for(done.wait(), 5.0)
    line.close()
    assert bus.collision_kinds == {"gap": 1} and bus.collisions == 1
    assert bus.min_request_gap is not None and bus.min_request_gap < bus.frame_gap


@pytest.mark.asyncio
async def test_unknown_and_asleep_units_stay_silent(sim_bus: SimBus, raw_serial: RawSerial):
    raw_serial.send(read_req(7, 4, 0, 2))
    assert await raw_serial.quiet(0.15) == b""
    assert sim_bus.unknown_unit == 1
    sim_bus[2].asleep = True
    raw_serial.send(read_req(2, 4, 0, 2))
    assert await raw_serial.quiet(0.15) == b""
    assert sim_bus[2].counters.silent == 1
    sim_bus[2].asleep = False
    data, _ = await transact(raw_serial, read_req(2, 4, 0, 2), reply_len(2))
    assert rtu_unframe(data)[0] == 2


@pytest.mark.asyncio
async def test_exception_switch_and_illegal_function(sim_bus: SimBus, raw_serial: RawSerial):
    sim_bus[1].exception = 6
    data, _ = await transact(raw_serial, read_req(1, 3, 0, 2), 5)
    assert rtu_unframe(data) == (1, bytes((0x83, 6)))
    sim_bus[1].exception = None
    await asyncio.sleep(0.01)
    # fc 8 (diagnostics) is not implemented: delimited by silence, answered with exception 1.
    data, _ = await transact(raw_serial, rtu_frame(1, bytes((8, 0, 0, 0x12, 0x34))), 5)
    assert rtu_unframe(data) == (1, bytes((0x88, 1)))


@pytest.mark.asyncio
async def test_bad_crc_and_garbage_requests_are_ignored(sim_bus: SimBus, raw_serial: RawSerial):
    frame = bytearray(read_req(2, 4, 0, 2))
    frame[-1] ^= 0xFF
    raw_serial.send(bytes(frame))
    assert await raw_serial.quiet(0.1) == b""
    raw_serial.send(os.urandom(3) + b"\xff\xfe")
    assert await raw_serial.quiet(0.1) == b""
    assert sim_bus.garbage == 2
    assert sim_bus[2].counters.requests == 0
    data, _ = await transact(raw_serial, read_req(2, 4, 0, 2), reply_len(2))
    assert rtu_unframe(data)[0] == 2


@pytest.mark.asyncio
async def test_injected_faults_look_like_line_faults(sim_bus: SimBus, raw_serial: RawSerial):
    meter = sim_bus[2]
    req = read_req(2, 4, 0, 2)
    meter.bad_crc = 1.0
    data, _ = await transact(raw_serial, req, reply_len(2))
    assert len(data) == reply_len(2)
    with pytest.raises(FrameError):
        rtu_unframe(data)
    meter.clear_faults()
    meter.wrong_unit = 1.0
    data = (await transact(raw_serial, req, reply_len(2)))[0]
    assert rtu_unframe(data)[0] == 3
    meter.clear_faults()
    meter.truncate = 1.0
    raw_serial.send(req)
    data = await raw_serial.quiet(0.1)
    assert 0 < len(data) < reply_len(2)
    meter.clear_faults()
    meter.noise = 1.0
    raw_serial.send(req)
    data = await raw_serial.quiet(0.1)
    assert reply_len(2) < len(data) <= reply_len(2) + 4
    assert meter.counters.noise == 1 and meter.counters.truncated == 1
    assert meter.counters.bad_crc == 1 and meter.counters.wrong_unit == 1


@pytest.mark.asyncio
async def test_late_reply_arrives_after_the_delay(sim_bus: SimBus, raw_serial: RawSerial):
    meter = sim_bus[2]
    meter.late_by = 0.25
    t0 = raw_serial.send(read_req(2, 4, 0, 2))
    assert await raw_serial.recv(reply_len(2), timeout=0.2) == b""  # a 0.2 s timeout misses it
    data = await raw_serial.recv(reply_len(2), timeout=1.0)
    assert rtu_unframe(data)[0] == 2
    assert raw_serial.last_rx - t0 >= 0.25 + meter.turnaround
    assert meter.counters.late == 1


@pytest.mark.asyncio
async def test_writes_are_validated_logged_and_broadcast(sim_bus: SimBus, raw_serial: RawSerial):
    growatt = sim_bus[1]
    ok = rtu_frame(1, Request.write_single(3, 40).pdu)
    data, _ = await transact(raw_serial, ok, 8)
    assert data == ok  # fc 6 echoes the request
    await asyncio.sleep(0.01)
    data, _ = await transact(raw_serial, rtu_frame(1, Request.write_single(3, 101).pdu), 5)
    assert rtu_unframe(data) == (1, bytes((0x86, 3)))
    await asyncio.sleep(0.01)
    data, _ = await transact(raw_serial, rtu_frame(1, Request.write_single(6, 1).pdu), 5)
    assert rtu_unframe(data) == (1, bytes((0x86, 2)))  # Pmax is read-only
    assert [(fc, a, v) for _, fc, a, v in growatt.write_log] == [(6, 3, [40])]
    assert growatt.holding[3] == 40
    # Broadcast: applied by everyone who has the register, no reply.
    await asyncio.sleep(0.01)
    raw_serial.send(rtu_frame(0, Request.write_single(3, 55).pdu))
    assert await raw_serial.quiet(0.1) == b""
    assert growatt.holding[3] == 55 and sim_bus.broadcasts == 1


@pytest.mark.asyncio
async def test_write_log_time_is_when_the_request_ended_on_the_wire(sim_bus: SimBus, raw_serial: RawSerial):
    t0 = raw_serial.send(rtu_frame(1, Request.write_single(3, 40).pdu))
    await raw_serial.recv(8)
    (at, *_), = sim_bus[1].write_log
    assert at >= t0 + sim_bus.wire_time(8) - EARLY
    assert at <= raw_serial.last_rx


@pytest.mark.asyncio
async def test_unplug_hangs_up_the_client_and_replug_restores_the_name(sim_bus: SimBus, rtu_port: SimSerialPort):
    raw = RawSerial(rtu_port.path)
    first_pts = rtu_port.pts
    rtu_port.unplug()
    assert not os.path.exists(rtu_port.path)
    await raw.recv(1, timeout=1.0)
    assert raw.hangup
    raw.close()
    rtu_port.replug()
    assert os.path.realpath(rtu_port.path) == rtu_port.pts and rtu_port.pts is not None
    raw = RawSerial(rtu_port.path)
    try:
        data, _ = await transact(raw, read_req(2, 4, 0, 2), reply_len(2))
        assert rtu_unframe(data)[0] == 2
    finally:
        raw.close()
    assert first_pts is not None and rtu_port.unplugs == 1


@pytest.mark.asyncio
async def test_ascii_mode_round_trip(sim_bus: SimBus, tmp_path):
    async with serve_rtu(sim_bus, mode="ascii", directory=tmp_path, link_name="ttyS0") as port:
        raw = RawSerial(port.path)
        try:
            frame = ascii_frame(1, Request.read(3, 43, 2).pdu)
            t0 = raw.send(frame)
            reply = await raw.quiet(0.3)
        finally:
            raw.close()
    unit, pdu = ascii_unframe(reply)
    assert unit == 1 and struct.unpack(">HH", pdu[2:]) == (5100, 0x0201)
    assert raw.last_rx - t0 >= sim_bus.wire_time(len(frame)) - EARLY


@pytest.mark.asyncio
async def test_fc16_and_fc23_frames_are_delimited_by_their_byte_count(tmp_path):
    unit = SimUnit(9, holding={a: 0 for a in range(10)})
    unit.allow_write(0, 10)
    bus = SimBus(19200, units=[unit])
    async with serve_rtu(bus, directory=tmp_path) as port:
        raw = RawSerial(port.path)
        try:
            data, _ = await transact(raw, rtu_frame(9, Request.write_multiple(2, [7, 8, 9]).pdu), 8)
            assert rtu_unframe(data) == (9, bytes.fromhex("1000020003"))
            await asyncio.sleep(0.01)
            req = Request.read_write(0, 5, 0, [1, 2])
            data, _ = await transact(raw, rtu_frame(9, req.pdu), reply_len(5))
            assert req.check_reply(rtu_unframe(data)[1]) == [1, 2, 7, 8, 9]
        finally:
            raw.close()
    assert bus.garbage == 0 and bus.collisions == 0


@settings(max_examples=50, deadline=None)
@given(st.lists(st.binary(min_size=1, max_size=40), max_size=6))
def test_any_garbage_leaves_the_line_ready_for_the_next_request(chunks):
    """Whatever a master or the noise puts on the line, the slaves resynchronise on
    silence and answer the next clean request; nothing escapes as an exception."""

    async def scenario() -> list[bytes]:
        unit = SimUnit(5, input={0: 1234}, turnaround=0.0)
        bus = SimBus(1_000_000, units=[unit])  # fast wire: examples stay short
        line = SerialLine(bus)
        out: list[bytes] = []
        for chunk in chunks:
            line.feed(chunk, out.append)
        await asyncio.sleep(0.006)  # silence: partial frames flushed, replies delivered
        out.clear()
        line.feed(read_req(5, 4, 0, 1), out.append)
        await asyncio.sleep(0.006)
        line.close()
        return out

    out = asyncio.run(scenario())
    assert out and rtu_unframe(out[-1]) == (5, bytes.fromhex("040204d2"))
