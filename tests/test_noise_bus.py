"""Line noise on a live bus: the published values are never wrong.

The seed installation - a Growatt MIN (unit 1) and an SDM230 grid meter (unit 2) on one
simulated 9600 Bd RS-485 line behind a real pseudo-terminal - is polled by the real
drivers through the real ``RtuLink``, the way the runtime does (``due`` / ``poll`` /
``service_writes``, one store flush per cycle). Then the simulator spoils a share of the
replies: noise bytes before or after a frame, and bad CRCs.

Checkable truth: the simulated units change their measurements on *every* read they
serve (each read is a new "generation" of the physics) and log what they served and
when. So

* every block the driver receives must be exactly what the unit served for that block
  while the driver's read was in flight - a stale reply, a corrupted frame or another
  block's reply cannot pass;
* after every poll, every published path must equal the value decoded from the block
  that was last read successfully, and the headline ``/Ac/Power`` of both devices the
  physical power the simulator had set for that read.

``scripts/noise-soak --minutes N`` runs the same code for minutes and prints reads,
wrong values, frame errors and the refresh rate with and without noise.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
from collections import deque
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from mbclient.devices import DeviceOptions, get_model
from mbclient.devices.base import Driver
from mbclient.errors import ModbusError
from mbclient.items import ItemStore, normalise
from mbclient.modbus.pdu import READ_HOLDING
from mbclient.registers import FAST
from mbclient.sim import SimBus, SimUnit, serve_rtu
from mbclient.sim.models import EastronMeter, GrowattMin, growatt_min, sdm230
from mbclient.transports.base import UnitClient
from mbclient.transports.rtu import RtuLink

BAUD = 9600
GROWATT_UNIT = 1
METER_UNIT = 2
HEADLINE = "/Ac/Power"

# --- the simulator's truth ----------------------------------------------------------------------


@dataclass(slots=True)
class Served:
    """One read a unit served: when, the registers, and the physics they encode."""

    time: float
    regs: list[int]
    power: float


class Truth:
    """Every read the units served, and every wrong value the clients saw."""

    def __init__(self) -> None:
        self.served: dict[tuple[int, int, int, int], deque[Served]] = {}
        self.generation = 0
        self.wrong: list[str] = []
        self.checked_reads = 0
        self.checked_values = 0

    def attach(self, unit: SimUnit, vary: Callable[[int], float]) -> None:
        """Make ``unit`` change its physics on every read (``vary(generation) -> power``)
        and log what it serves."""

        def on_read(table: str, address: int, count: int) -> None:
            self.generation += 1
            power = vary(self.generation)
            bank = unit.bank(table)
            regs = [bank.get(a, 0) for a in range(address, address + count)]
            fc = READ_HOLDING if table == "holding" else 4
            log = self.served.setdefault((unit.address, fc, address, count), deque(maxlen=16))
            log.append(Served(time.monotonic(), regs, power))

        unit.on_read = on_read

    def check_read(self, unit: int, fc: int, address: int, count: int, regs: list[int],
                   started: float, ended: float) -> Served | None:
        """The registers a client received must be what the unit served during the read."""
        self.checked_reads += 1
        log = self.served.get((unit, fc, address, count), ())
        during = [s for s in log if started <= s.time <= ended]
        if during and during[-1].regs == regs:
            return during[-1]
        older = [s for s in log if s.regs == regs and s.time < started]
        why = "a reply served before the read started (stale)" if older else "registers the unit never served"
        self.wrong.append(f"unit {unit} fc {fc} {address}+{count}: {why}")
        return None


def vary_meter(meter: EastronMeter) -> Callable[[int], float]:
    def vary(g: int) -> float:
        power = -float(1000 + g % 2000)  # W, exported: the PV covers the house and more
        meter.measure(power, voltage=230.0 + (g % 50) / 10, frequency=50.0 - (g % 7) / 100)
        meter.set_energy(1234.5 + g * 0.25, 567.75 + g * 0.125)
        return power

    return vary


def vary_inverter(inverter: GrowattMin) -> Callable[[int], float]:
    def vary(g: int) -> float:
        inverter.output_w = float(500 + g % 3000)
        inverter.eac_total = 8765.4 + g * 0.1
        inverter.publish()
        return inverter.output_w

    return vary


# --- the clients: real drivers, polled as the runtime polls them ------------------------------------


class RecordingClient(UnitClient):
    """A ``UnitClient`` that checks each block it returns against the simulator's truth
    and remembers it (the driver sees exactly what the link returned)."""

    def __init__(self, link: RtuLink, unit: int, truth: Truth) -> None:
        super().__init__(link, unit)
        self.truth = truth
        self.last: dict[tuple[int, int, int], tuple[list[int], Served | None]] = {}
        self.reads: dict[tuple[int, int, int], int] = {}

    async def read(self, function: int, address: int, count: int, *, timeout: float,
                   priority: bool = False) -> list[int]:
        started = time.monotonic()
        regs = await super().read(function, address, count, timeout=timeout, priority=priority)
        served = self.truth.check_read(self.unit, function, address, count, regs, started, time.monotonic())
        key = (function, address, count)
        self.last[key] = (list(regs), served)
        self.reads[key] = self.reads.get(key, 0) + 1
        return regs


@dataclass
class Device:
    name: str
    driver: Driver
    store: ItemStore
    client: RecordingClient
    failures: int = 0  # polls that ended in a ModbusError

    def fast_blocks(self) -> set[tuple[int, int, int]]:
        return {(int(b.table), b.address, b.count) for b in self.driver.blocks if b.refresh == FAST}

    def fast_reads(self) -> int:
        """FAST-class block reads so far, in whole refreshes of the FAST class."""
        fast = self.fast_blocks()
        return sum(n for key, n in self.client.reads.items() if key in fast) // max(1, len(fast))

    def reads(self) -> int:
        return sum(self.client.reads.values())


def check_store(dev: Device, truth: Truth) -> None:
    """Every published path equals the value decoded from its block's last good read; the
    headline power equals the simulator's physics for that read."""
    for block in dev.driver.blocks:
        got = dev.client.last.get((int(block.table), block.address, block.count))
        if got is None:
            continue
        regs, served = got
        for reg, value in block.decode(regs).items():
            for path in reg.paths:
                if path not in dev.store:
                    continue
                truth.checked_values += 1
                published = dev.store[path]
                if published != normalise(value):
                    truth.wrong.append(f"{dev.name} {path} = {published!r}, the last read says {value!r}")
                if path == HEADLINE and served is not None and published != served.power:
                    truth.wrong.append(f"{dev.name} {path} = {published!r}, the simulator had {served.power!r}")


async def run_device(dev: Device, truth: Truth) -> None:
    """The runtime's polling in small: poll what is due, service writes, flush, check."""
    driver = dev.driver
    while True:
        now = time.monotonic()
        if driver.due(now) or driver.wakeup.is_set():
            try:
                await driver.poll(now)
                if driver.wakeup.is_set():
                    await driver.service_writes(now)
            except ModbusError:
                dev.failures += 1
            dev.store.flush()
            check_store(dev, truth)
        wait = driver.next_deadline(time.monotonic()) - time.monotonic()
        await asyncio.sleep(min(max(wait, 0.005), 1.0))


# --- the rig ------------------------------------------------------------------------------------


@dataclass
class Rig:
    bus: SimBus
    link: RtuLink
    truth: Truth
    devices: list[Device]

    @property
    def units(self) -> list[SimUnit]:
        return [self.bus[GROWATT_UNIT], self.bus[METER_UNIT]]

    def faults(self, *, noise: float = 0.0, bad_crc: float = 0.0, truncate: float = 0.0,
               wrong_unit: float = 0.0) -> None:
        for u in self.units:
            u.noise, u.bad_crc, u.truncate, u.wrong_unit = noise, bad_crc, truncate, wrong_unit

    def injected(self) -> int:
        return sum(u.counters.noise + u.counters.bad_crc + u.counters.truncated + u.counters.wrong_unit
                   for u in self.units)

    def frame_errors(self) -> int:
        return sum(self.link.stats(u).frame_errors for u in (GROWATT_UNIT, METER_UNIT))


@contextlib.asynccontextmanager
async def noisy_bus(directory: str | Path) -> AsyncIterator[Rig]:
    """The seed bus on a pty, both drivers identified and polling in the background."""
    truth = Truth()
    inverter = growatt_min(GROWATT_UNIT)
    meter = sdm230(METER_UNIT)
    truth.attach(inverter, vary_inverter(inverter))
    truth.attach(meter, vary_meter(meter))
    bus = SimBus(BAUD, units=[inverter, meter])
    async with serve_rtu(bus, directory=directory) as port:
        link = RtuLink.serial(port.path, BAUD)
        devices = []
        for name, unit, model in (("growatt", GROWATT_UNIT, "growatt_min"), ("sdm230", METER_UNIT, "sdm230")):
            store = ItemStore()
            client = RecordingClient(link, unit, truth)
            driver = get_model(model).create(client, store, DeviceOptions(baud=BAUD))
            await driver.read_identity()
            driver.add_items()
            devices.append(Device(name, driver, store, client))
        rig = Rig(bus, link, truth, devices)
        tasks = [asyncio.create_task(run_device(d, truth), name=f"poll-{d.name}") for d in devices]
        try:
            yield rig
        finally:
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            await link.aclose()


@dataclass
class Phase:
    """What one stretch of the soak saw (counters are deltas over the phase)."""

    seconds: float
    reads: dict[str, int] = field(default_factory=dict)
    fast_reads: dict[str, int] = field(default_factory=dict)
    failures: dict[str, int] = field(default_factory=dict)
    injected: int = 0
    frame_errors: int = 0
    wrong: int = 0
    checked_values: int = 0

    def refresh_rate(self, name: str) -> float:
        """Refreshes of the FAST class per second (what /Ac/Power's freshness depends on)."""
        return self.fast_reads[name] / self.seconds if self.seconds > 0 else math.nan


async def measure(rig: Rig, seconds: float, until: Callable[[Phase], bool] | None = None) -> Phase:
    """Run for ``seconds`` (or until ``until(phase so far)``) and return the deltas."""
    def snapshot() -> tuple[dict[str, int], dict[str, int], dict[str, int], int, int, int, int]:
        return ({d.name: d.reads() for d in rig.devices}, {d.name: d.fast_reads() for d in rig.devices},
                {d.name: d.failures for d in rig.devices}, rig.injected(), rig.frame_errors(),
                len(rig.truth.wrong), rig.truth.checked_values)

    before = snapshot()
    started = time.monotonic()
    phase = Phase(0.0)
    while True:
        await asyncio.sleep(0.25)
        now = snapshot()
        phase = Phase(
            time.monotonic() - started,
            {k: now[0][k] - before[0][k] for k in now[0]},
            {k: now[1][k] - before[1][k] for k in now[1]},
            {k: now[2][k] - before[2][k] for k in now[2]},
            now[3] - before[3], now[4] - before[4], now[5] - before[5], now[6] - before[6],
        )
        if phase.seconds >= seconds or (until is not None and until(phase)):
            return phase


# --- the suite -----------------------------------------------------------------------------------


@pytest.mark.asyncio
async def test_noise_and_bad_crcs_never_publish_a_wrong_value(tmp_path) -> None:
    async with noisy_bus(tmp_path) as rig:
        clean = await measure(rig, 30.0, until=lambda p: min(p.fast_reads.values()) >= 3)
        assert clean.wrong == 0 and clean.frame_errors == 0, rig.truth.wrong[:5]

        rig.faults(noise=0.2, bad_crc=0.2)  # far more than a bad line, to see many in seconds
        noisy = await measure(rig, 60.0, until=lambda p: p.injected >= 8 and min(p.fast_reads.values()) >= 5)
        rig.faults()

    assert rig.truth.wrong == [], rig.truth.wrong[:5]
    assert noisy.injected >= 8, "the simulator did not spoil enough replies in 60 s"
    assert noisy.frame_errors > 0  # the link saw (and counted) them
    assert min(noisy.fast_reads.values()) >= 5  # both devices kept being refreshed
    assert rig.truth.checked_reads > 0 and noisy.checked_values > 0
