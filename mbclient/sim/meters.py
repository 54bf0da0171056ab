"""Simulated meters of other manufacturers, each written from its maker's register list
(facts and sources in shared/reference/devices.md section 3), never from a definition file.

``Pro380``: Inepro PRO380-Mod (three-phase, holding registers, big-endian float32, power
in kW, model code 0x2007 at 0x1010, serial u32 at 0x4000).
"""

from __future__ import annotations

from collections.abc import Sequence

from .unit import HOLDING, SimUnit

PRO380_CODE = 0x2007


class Pro380(SimUnit):
    """Inepro PRO380-Mod. ``measure`` sets the live values; energies accumulate in
    ``advance``. Registers the list does not name answer exception 2."""

    def __init__(self, address: int = 1, *, serial: int = 18012345, **kw: object) -> None:
        super().__init__(address, name="Inepro PRO380-Mod", **kw)  # type: ignore[arg-type]
        self.set_u16(HOLDING, 0x1010, PRO380_CODE)
        self.set_u32(HOLDING, 0x4000, serial)
        self.define(HOLDING, 0x4002, 5)
        self.set_u16(HOLDING, 0x4007, 0x0105)  # firmware 1.05
        self.define(HOLDING, 0x4008, 1)
        self.set_u16(HOLDING, 0x4009, 0x0002)  # hardware
        self.define(HOLDING, 0x5000, 0x2C)  # 0x5000-0x502B: instantaneous values
        self.define(HOLDING, 0x6000, 0x24)  # 0x6000-0x6023: energies
        self.import_kwh = [0.0, 0.0, 0.0]
        self.export_kwh = [0.0, 0.0, 0.0]
        self.measure((230.0, 230.0, 230.0), (0.0, 0.0, 0.0))

    def measure(self, volts: Sequence[float], watts: Sequence[float], pf: float = 0.98) -> None:
        self.watts = list(watts)
        for i in range(3):
            self.set_f32(HOLDING, 0x5002 + 2 * i, volts[i])
            amps = abs(watts[i]) / (volts[i] * pf) if volts[i] else 0.0
            self.set_f32(HOLDING, 0x500C + 2 * i, amps)
            self.set_f32(HOLDING, 0x5014 + 2 * i, watts[i] / 1000.0)  # kW
        self.set_f32(HOLDING, 0x5008, 50.02)
        self.set_f32(HOLDING, 0x5012, sum(watts) / 1000.0)
        self.set_f32(HOLDING, 0x502A, pf)
        self._energies()

    def advance(self, hours: float) -> None:
        for i, w in enumerate(self.watts):
            if w >= 0:
                self.import_kwh[i] += w * hours / 1000.0
            else:
                self.export_kwh[i] -= w * hours / 1000.0
        self._energies()

    def _energies(self) -> None:
        imp, exp = sum(self.import_kwh), sum(self.export_kwh)
        self.set_f32(HOLDING, 0x6000, imp + exp)  # total (absolute) energy
        self.set_f32(HOLDING, 0x600C, imp)
        self.set_f32(HOLDING, 0x6018, exp)
        for i in range(3):
            self.set_f32(HOLDING, 0x6012 + 2 * i, self.import_kwh[i])
            self.set_f32(HOLDING, 0x601E + 2 * i, self.export_kwh[i])
