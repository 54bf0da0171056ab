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


# --- ABB B21 / B23 / B24 ---------------------------------------------------------------------------

ABB_MODELS = {"B21": "B21 ", "B23": "B23 ", "B24": "B24 "}
ABB_NOT_SUPPORTED_U32 = 0xFFFFFFFF
ABB_NOT_SUPPORTED_S32 = 0x7FFFFFFF
ABB_NOT_SUPPORTED_U64 = 0xFFFFFFFFFFFFFFFF
ABB_NOT_SUPPORTED_S16 = 0x7FFF


class AbbMeter(SimUnit):
    """ABB B21 (single phase) / B23 / B24 (three phase), holding registers, high word first
    (ABB B-series Modbus map, devices.md 3.6): model text at 0x8960 (4 ASCII characters),
    serial 0x8900 (32-bit number), firmware text 0x8908 (8 registers); voltages u32 0.1 V
    at 0x5B00/02/04, currents u32 0.01 A at 0x5B0C/0E/10, active power s32 0.01 W total
    0x5B14 and L1-L3 0x5B16/18/1A, frequency u16 0.01 Hz 0x5B2C, power factor s16 0.001
    total 0x5B3A and L1-L3 0x5B3B-3D, energy u64 0.01 kWh import 0x5000, export 0x5004,
    per phase import 0x5460/64/68 and export 0x546C/70/74. A B21 answers its per-phase
    points with the "not supported" value (all ones; 0x7FFF... for signed)."""

    def __init__(self, address: int = 1, *, model: str = "B23", serial: int = 21345678, **kw: object) -> None:
        super().__init__(address, name=f"ABB {model}", **kw)  # type: ignore[arg-type]
        self.model = model
        self.phases = 1 if model == "B21" else 3
        self.set_text(HOLDING, 0x8960, 2, ABB_MODELS[model])
        self.set_s32(HOLDING, 0x8900, serial)
        self.set_text(HOLDING, 0x8908, 8, "1.2.0")
        self.define(HOLDING, 0x5000, 0x10)
        self.define(HOLDING, 0x5460, 0x18)
        self.define(HOLDING, 0x5B00, 0x40)
        self.import_kwh = [0.0] * 3
        self.export_kwh = [0.0] * 3
        self.measure((230.0, 230.0, 230.0), (0.0, 0.0, 0.0))

    def _u64(self, addr: int, value: int) -> None:
        for i in range(4):
            self.holding[addr + i] = (value >> (48 - 16 * i)) & 0xFFFF

    def measure(self, volts: Sequence[float], watts: Sequence[float], pf: float = 0.95,
                hz: float = 50.0) -> None:
        n = self.phases
        self.set_u16(HOLDING, 0x5B2C, round(hz * 100))
        self.set_s32(HOLDING, 0x5B14, round(sum(watts[:n]) * 100))
        self.set_s16(HOLDING, 0x5B3A, round(pf * 1000))
        for i in range(3):
            if i < n:
                amps = abs(watts[i]) / (volts[i] * pf) if volts[i] else 0.0
                self.set_u32(HOLDING, 0x5B00 + 2 * i, round(volts[i] * 10))
                self.set_u32(HOLDING, 0x5B0C + 2 * i, round(amps * 100))
            else:
                self.set_u32(HOLDING, 0x5B00 + 2 * i, ABB_NOT_SUPPORTED_U32)
                self.set_u32(HOLDING, 0x5B0C + 2 * i, ABB_NOT_SUPPORTED_U32)
            if self.phases == 3:
                self.set_s32(HOLDING, 0x5B16 + 2 * i, round(watts[i] * 100))
                self.set_s16(HOLDING, 0x5B3B + i, round(pf * 1000))
            else:
                self.set_u32(HOLDING, 0x5B16 + 2 * i, ABB_NOT_SUPPORTED_S32)
                self.set_u16(HOLDING, 0x5B3B + i, ABB_NOT_SUPPORTED_S16)
        self.set_energy(self.import_kwh, self.export_kwh)

    def set_energy(self, import_kwh: Sequence[float], export_kwh: Sequence[float]) -> None:
        self.import_kwh, self.export_kwh = list(import_kwh), list(export_kwh)
        self._u64(0x5000, round(sum(import_kwh) * 100))
        self._u64(0x5004, round(sum(export_kwh) * 100))
        for i in range(3):
            per_phase = self.phases == 3
            self._u64(0x5460 + 4 * i, round(import_kwh[i] * 100) if per_phase else ABB_NOT_SUPPORTED_U64)
            self._u64(0x546C + 4 * i, round(export_kwh[i] * 100) if per_phase else ABB_NOT_SUPPORTED_U64)
