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


register_driver("smappee", SmappeeDriver)

__all__ = ["SmappeeDriver", "phase_rows"]
