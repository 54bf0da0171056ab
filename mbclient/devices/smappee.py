"""Smappee Power Box: the code beside ``smappee.toml``.

The Power Box measures voltage itself; currents come from CTs on the Smappee bus (CT hubs
and solid-core CTs, up to 10 bus devices, 28 CT slots). Which CT measures which phase is
configured in the Power Box (holding 0x1000 + slot: 1/2/4 = L1/L2/L3 forward, 16/32/64
reverse, 0 none), so the rows of a phase live at addresses that follow its CT's slot:
current f32 at 0x0080 + 4·slot, power f32 at 0x0380 + 2·slot, energy (Wh, s32) at
0x3000 + 4·slot (import) and + 2 (export); phase voltage f32 at 0x0000 + 4·phase. That is
found at connect time, as the stock client does:

1. reset the slot mapping (0x1140: 0..27), walk the bus devices (0x1480 + 0x20·n: type,
   number of channels, slot per channel) and read each CT's phase;
2. no CT assigned at all: give the first three CTs L1, L2, L3 (as the stock client guesses);
3. the first CT of each phase is that phase; the Power Box sums them into a virtual meter
   when told which slots (mask at 0x1400): total power 0x03C0, energies 0x3100 / 0x3102;
4. save the configuration to the Power Box's flash (0xFDE8 = 1).

Serial: the device type and a 24-bit number ("5400" + 6 digits); version: major.minor.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence

from ..registers import FAST, HOLDING, SLOW, Register, Value
from .base import Driver, Identity
from .definition import data_type, register_driver

F32LE = data_type("f32le")
S32LE = data_type("s32le")
MAX_BUS_DEVICES = 10
MAX_CT_SLOTS = 28
#: CT phase register raw -> phase index (0-2), -1 unassigned; anything else: configured
#: outside Venus (left alone).
CT_PHASE = {0: -1, 1: 0, 16: 0, 2: 1, 32: 1, 4: 2, 64: 2}
CT_PHASE_TEXT = {-1: "None", 0: "L1", 1: "L2", 2: "L3"}
#: CT type register (0x1100 + slot) -> name, as the Power Box numbers them.
CT_TYPES = ("SCT01-50A/100A/200A", "SCT01-400A/800A", "Rogowski coil 600A-100mV", "SCT02-50A", "SCT02-100A",
            "SCT02-200A", "SCT02-400A", "SCT02-800A", "SCT03-50A", "SCT03-100A", "SCT03-200A",
            "Rogowski coil 400A-100mV", "Closed CT")


def phase_rows(phase: int, slot: int) -> list[Register]:
    n = phase + 1
    return [
        Register(f"/Ac/L{n}/Voltage", 0x0000 + 4 * phase, F32LE, HOLDING, unit="V", precision=1, refresh=FAST),
        Register(f"/Ac/L{n}/Current", 0x0080 + 4 * slot, F32LE, HOLDING, unit="A", precision=1, refresh=FAST, asleep=0.0),
        Register(f"/Ac/L{n}/Power", 0x0380 + 2 * slot, F32LE, HOLDING, unit="W", precision=1, refresh=FAST, asleep=0.0),
        Register(f"/Ac/L{n}/Energy/Forward", 0x3000 + 4 * slot, S32LE, HOLDING, scale=1000, unit="kWh", precision=1,
                 refresh=SLOW, cumulative=True),
        Register(f"/Ac/L{n}/Energy/Reverse", 0x3002 + 4 * slot, S32LE, HOLDING, scale=1000, unit="kWh", precision=1,
                 refresh=SLOW, cumulative=True),
    ]


TOTALS = (
    Register("/Ac/Power", 0x03C0, F32LE, HOLDING, unit="W", precision=1, refresh=FAST, asleep=0.0),
    Register("/Ac/Energy/Forward", 0x3100, S32LE, HOLDING, scale=1000, unit="kWh", precision=1, refresh=SLOW, cumulative=True),
    Register("/Ac/Energy/Reverse", 0x3102, S32LE, HOLDING, scale=1000, unit="kWh", precision=1, refresh=SLOW, cumulative=True),
)


class SmappeeDriver(Driver):
    """The file's rows plus the rows of the CTs found on the Smappee bus."""

    def __init__(self, *args, **kwargs) -> None:  # noqa: ANN002, ANN003
        super().__init__(*args, **kwargs)
        self._ct_rows: tuple[Register, ...] = ()
        self.cts: dict[int, int] = {}  # slot -> phase index (-1 none)
        self.ct_info: dict[int, tuple[int, str, int]] = {}  # slot -> (bus device, channel letter, type)
        self._ct_writes: list[tuple[int, list[int]]] = []
        self._reconfigure = False

    def registers(self) -> Sequence[Register]:
        return (*self.model.registers, *self._ct_rows)

    def make_identity(self, values: Mapping[str, Value]) -> Identity:
        dtype, number, version = values.get("device_type"), values.get("serial_number"), values.get("version")
        if not isinstance(dtype, int) or not isinstance(number, int):
            return super().make_identity(values)
        serial = f"{dtype:04d}{number & 0xFFFFFF:06d}"
        fw = f"{version >> 16}.{version & 0xFFFF}" if isinstance(version, int) else None
        return Identity(serial=serial, firmware=fw, extra={"device_type": dtype})

    async def read_identity(self) -> Identity:
        identity = await super().read_identity()
        await self._configure_cts()
        return identity

    async def _read(self, address: int) -> int:
        return (await self.client.read_holding(address, 1, timeout=self.timeout))[0]

    async def _write(self, address: int, words: list[int]) -> None:
        if len(words) == 1:
            await self.client.write_register(address, words[0], timeout=self.timeout, priority=True)
        else:
            await self.client.write_registers(address, words, timeout=self.timeout, priority=True)

    async def _configure_cts(self) -> None:
        await self._write(0x1140, list(range(MAX_CT_SLOTS)))
        slots: list[int] = []
        self.cts = {}
        for n in range(MAX_BUS_DEVICES):
            base = 0x1480 + 0x20 * n
            if await self._read(base) == 0:
                continue
            for ch in range(await self._read(base + 1)):
                slot = await self._read(base + 0x0A + ch + (ch > 7))
                raw = await self._read(0x1000 + slot)
                if raw not in CT_PHASE:
                    self.log.warning("%s: CT %d configured outside Venus (%#x), left alone", self.model.name, slot, raw)
                    continue
                slots.append(slot)
                self.cts[slot] = CT_PHASE[raw]
                self.ct_info[slot] = (n, chr(ord("A") + ch), await self._read(0x1100 + slot))
        if slots and all(p < 0 for p in self.cts.values()):
            self.log.info("%s: no CT assigned to a phase, giving the first ones L1-L3", self.model.name)
            for phase, slot in enumerate(slots[:3]):
                await self._write(0x1000 + slot, [1 << phase])
                self.cts[slot] = phase
        first = {}
        for slot in slots:
            first.setdefault(self.cts[slot], slot)
        rows: list[Register] = []
        mask = 0
        for phase in range(3):
            if phase in first:
                rows += phase_rows(phase, first[phase])
                mask |= 1 << first[phase]
        await self._write(0x1400, S32LE.encode(mask))
        if mask:
            rows += TOTALS
        self._ct_rows = tuple(rows)
        self.nr_of_phases = len(first.keys() - {-1})
        await self._write(0xFDE8, [1])  # keep it in the Power Box's flash
        await asyncio.sleep(0.25)
        self.replan()
        if "/NrOfPhases" in self.store:
            self.store.set("/NrOfPhases", self.nr_of_phases)
        if self._items_added:
            self._add_ct_items()

    # -- CT configuration on D-Bus (the GUI's Smappee pages) ----------------------------------
    def extra_items(self) -> None:
        self._add_ct_items()

    def _add_ct_items(self) -> None:
        """/CT/<slot>/{Phase,Type} writable, {Device,DeviceChannel} and /CT/<slot>/Identify
        (a write blinks the CT's LED): what the stock client publishes per CT."""
        store = self.store
        for slot, phase in self.cts.items():
            device, channel, ct_type = self.ct_info.get(slot, (0, "A", 0))
            base = f"/CT/{slot}"
            store.add(f"{base}/Phase", phase, kind=int, writable=True, choices=tuple(CT_PHASE_TEXT),
                      formatter=lambda v: CT_PHASE_TEXT.get(v, str(v)),
                      on_write=lambda v, slot=slot: self._queue_phase(slot, int(v)))
            store.add(f"{base}/Type", ct_type, kind=int, writable=True, min=0, max=len(CT_TYPES) - 1,
                      formatter=lambda v: CT_TYPES[v] if isinstance(v, int) and 0 <= v < len(CT_TYPES) else str(v),
                      on_write=lambda v, slot=slot: self._queue(0x1100 + slot, [int(v)], reconfigure=True))
            store.add(f"{base}/Device", device, kind=int)
            store.add(f"{base}/DeviceChannel", channel, kind=str)
            store.add(f"{base}/Identify", None, kind=int, writable=True,
                      on_write=lambda v, slot=slot: self._queue(0x0900 + slot, [int(v)]))

    def _queue(self, address: int, words: list[int], *, reconfigure: bool = False) -> bool:
        self._ct_writes.append((address, words))
        self._reconfigure = self._reconfigure or reconfigure
        self.wakeup.set()
        return True

    def _queue_phase(self, slot: int, phase: int) -> bool:
        """A CT moves to a phase; another CT on that phase is unassigned (one CT per phase)."""
        self._queue(0x1000 + slot, [0 if phase < 0 else 1 << phase], reconfigure=True)
        if phase >= 0:
            for other, p in self.cts.items():
                if other != slot and p == phase:
                    self._queue(0x1000 + other, [0])
        return True

    def writes_deadline(self, now: float) -> float:
        return now if self._ct_writes else super().writes_deadline(now)

    async def service_device(self, now: float) -> None:
        """CT configuration writes, then the rows again (as the stock client re-initialises)."""
        while self._ct_writes:
            address, words = self._ct_writes.pop(0)
            await self._write(address, words)
            self.log.info("%s: wrote %#06x = %s", self.model.name, address, words)
        if self._reconfigure:
            self._reconfigure = False
            for path in [p for p in self.store.items if p.startswith("/CT/")]:
                self.store.remove(path)
            await self._configure_cts()


register_driver("smappee", SmappeeDriver)

__all__ = ["SmappeeDriver", "phase_rows"]
