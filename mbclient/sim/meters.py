"""Simulated meters of other manufacturers, each written from its maker's register list
(facts and sources in shared/reference/devices.md section 3), never from a definition file.

``Pro380``: Inepro PRO380-Mod (three-phase, holding registers, big-endian float32, power
in kW, model code 0x2007 at 0x1010, serial u32 at 0x4000).
"""

from __future__ import annotations

import struct
from collections.abc import Mapping, Sequence

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


# --- Carlo Gavazzi ---------------------------------------------------------------------------------

#: Model codes at holding 0x000B (Carlo Gavazzi protocol documents; devices.md 3.7).
CG_CODES = {"em24_ethernet": 1648, "em24": 71, "et112": 102, "em300_s27": 338, "et340": 335, "em540": 1746}


class CarloGavazziMeter(SimUnit):
    """A Carlo Gavazzi meter by its communication protocol (devices.md 3.7). Values are
    INT32 with the low word first. ``layout``:

    * ``em24_ethernet``: V 0x0000/02/04 (0.1 V), A 0x000C.. (0.001 A), W 0x0012.. and total
      0x0028 (0.1 W), kWh+ 0x0034 and per phase 0x0040.., kWh- 0x004E (0.1 kWh), Hz 0x0033
      (UINT16 0.1 Hz), phase sequence 0x0032 (0 / 0xFFFF), hardware 0x0302, firmware 0x0304,
      measuring system 0x1002 (0 3P.n, 1 3P.1, 2 2P, 3 1P, 4 3P), serial 0x5000 (7 registers),
      application 0xA000 (7 = H), front switch 0xA100.
    * ``em24`` (RS-485): as above but Hz 0x0037, kWh+ 0x003E and per phase 0x0046.., kWh-
      0x005C, phase sequence 0x0036, firmware 0x0303, serial 0x1300, application 0x1101,
      measuring system 0x1102, front selector 0x0304 (3 = locked).
    * ``em300_s27``: the EM24 measurement layout; serial 0x5000, firmware 0x0302,
      measurement mode 0x1103 (1 = B), measuring system 0x1002.
    * ``et340`` / ``em540``: the EM24 Ethernet measurement layout, plus kWh- per phase
      0x0060.. (ET340), power factors 0x002E-0x0031 (INT16 0.001) and Hz at 0x053C (INT32
      0.001 Hz) on the EM540; serial 0x5000, firmware 0x0302, measurement mode 0x1103 (ET
      1 = B, EM540 2 = C), measuring system 0x1002.
    * ``et112``: single phase, V 0x0000, A 0x0002, W 0x0004, Hz 0x000F, kWh+ 0x0010, kWh-
      0x0020 (reported negative), serial 0x5000, firmware 0x0303, measurement mode 0x1103.

    Until the meter is in the application / mode that shows exported power as negative
    (EM24: H; ET/EM3xx: B; EM540: C), it reports power as a magnitude.
    """

    def __init__(self, address: int = 1, *, layout: str = "et340", serial: str = "BW1234567",
                 measuring_system: int = 0, **kw: object) -> None:
        super().__init__(address, name=f"Carlo Gavazzi {layout}", **kw)  # type: ignore[arg-type]
        self.layout = layout
        self.set_u16(HOLDING, 0x000B, CG_CODES[layout])
        em24 = layout in ("em24_ethernet", "em24", "em300_s27")
        self.define(HOLDING, 0x0000, 0x70)
        eth = layout == "em24_ethernet"
        self.set_text(HOLDING, 0x1300 if layout == "em24" else 0x5000, 7, serial)
        if eth:
            self.set_u16(HOLDING, 0x0302, 0x1203)  # hardware 1.2.3
            self.set_u16(HOLDING, 0x0304, 0x2105)  # firmware 2.1.5
            self.mode_register, self.mode_wanted = 0xA000, 7
            self.set_u16(HOLDING, 0xA100, 3)
            self.system_register = 0x1002
        elif layout == "em24":
            self.set_u16(HOLDING, 0x0303, 12)
            self.set_u16(HOLDING, 0x0304, 0)  # front selector unlocked
            self.mode_register, self.mode_wanted = 0x1101, 7
            self.system_register = 0x1102
        else:
            self.set_u16(HOLDING, 0x0303 if layout == "et112" else 0x0302, 0x1104 if layout == "em540" else 7)
            self.mode_register, self.mode_wanted = 0x1103, 2 if layout == "em540" else 1
            self.system_register = 0x1002
        if layout == "em540":
            self.define(HOLDING, 0x010E, 1)
            self.define(HOLDING, 0x053C, 2)
        self.set_u16(HOLDING, self.mode_register, 0)  # factory: not yet the mode we need
        self.allow_write(self.mode_register)
        self.set_u16(HOLDING, self.system_register, measuring_system)
        self.allow_write(self.system_register, values=range(5))
        self.em24 = em24
        self.watts = [0.0, 0.0, 0.0]
        self.volts = [230.0] * 3
        self.import_kwh = [0.0] * 3
        self.export_kwh = 0.0
        self.export_kwh_phases = [0.0] * 3
        self.hz = 50.0
        self.pf = 1.0

    def _s32le(self, addr: int, value: float) -> None:
        v = round(value) & 0xFFFFFFFF
        self.holding[addr], self.holding[addr + 1] = v & 0xFFFF, v >> 16

    def measure(self, volts, watts, hz: float = 50.0, pf: float = 1.0) -> None:  # noqa: ANN001
        self.volts, self.watts, self.hz, self.pf = list(volts), list(watts), hz, pf
        self._refresh()

    def set_energy(self, import_kwh, export_kwh: float, export_phases=(0.0, 0.0, 0.0)) -> None:  # noqa: ANN001
        self.import_kwh, self.export_kwh, self.export_kwh_phases = list(import_kwh), export_kwh, list(export_phases)
        self._refresh()

    def applied_write(self, address: int, values: list[int]) -> None:
        super().applied_write(address, values)
        self._refresh()

    def _refresh(self) -> None:
        signed = self.holding[self.mode_register] == self.mode_wanted
        w = [x if signed else abs(x) for x in self.watts]
        if self.layout == "et112":
            self._s32le(0x0000, self.volts[0] * 10)
            self._s32le(0x0002, abs(w[0]) / self.volts[0] * 1000)
            self._s32le(0x0004, w[0] * 10)
            self.set_u16(HOLDING, 0x000F, round(self.hz * 10))
            self._s32le(0x0010, self.import_kwh[0] * 10)
            self._s32le(0x0020, -self.export_kwh * 10)
            return
        for i in range(3):
            self._s32le(0x0000 + 2 * i, self.volts[i] * 10)
            self._s32le(0x000C + 2 * i, abs(w[i]) / self.volts[i] * 1000 if self.volts[i] else 0)
            self._s32le(0x0012 + 2 * i, w[i] * 10)
        self._s32le(0x0028, sum(w) * 10)
        if self.em24 and self.layout != "em24_ethernet":
            self.set_u16(HOLDING, 0x0037, round(self.hz * 10))
            self._s32le(0x003E, sum(self.import_kwh) * 10)
            for i in range(3):
                self._s32le(0x0046 + 2 * i, self.import_kwh[i] * 10)
            self._s32le(0x005C, self.export_kwh * 10)
            self.set_u16(HOLDING, 0x0036, 0)
            return
        self.set_u16(HOLDING, 0x0033, round(self.hz * 10))
        self._s32le(0x0034, sum(self.import_kwh) * 10)
        for i in range(3):
            self._s32le(0x0040 + 2 * i, self.import_kwh[i] * 10)
        self._s32le(0x004E, self.export_kwh * 10)
        self.set_u16(HOLDING, 0x0032, 0)
        if self.layout == "et340":
            for i in range(3):
                self._s32le(0x0060 + 2 * i, self.export_kwh_phases[i] * 10)
        if self.layout == "em540":
            for i in range(4):
                self.set_s16(HOLDING, 0x002E + i, round(self.pf * 1000))
            self._s32le(0x053C, self.hz * 1000)
            self.set_u16(HOLDING, 0x010E, 0xFFFF)  # wrong rotation


# --- Victron P1Link and EV Charging Station --------------------------------------------------------


class P1Link(SimUnit):
    """Victron P1Link (devices.md 3.11), holding registers: product id 0x1000 = 0xC02F,
    serial 0x1001 (8 registers text), firmware 0x1009-0x100A (bytes -, major, minor, beta),
    hardware 0x100B, phase configuration 0x2000 (0 single phase, 3 three phase), name
    0x2002 (32 registers UTF-8); kWh import 0x3034 / export 0x3036 (u32 0.01 kWh,
    0xFFFFFFFF unknown), total W 0x3080 (s32); per phase n: V 0x3040+8(n-1) (s16 0.01 V),
    A 0x3058+2(n-1) (s32 0.01 A), W 0x3082+4(n-1) (s32)."""

    def __init__(self, address: int = 1, *, serial: str = "HQ2301ABC", phase_config: int = 3, **kw: object) -> None:
        super().__init__(address, name="P1Link", **kw)  # type: ignore[arg-type]
        self.set_u16(HOLDING, 0x1000, 0xC02F)
        self.set_text(HOLDING, 0x1001, 8, serial)
        self.set_u32(HOLDING, 0x1009, 0x000110FF)  # v1.10
        self.set_u16(HOLDING, 0x100B, 1)
        self.set_u16(HOLDING, 0x2000, phase_config)
        self.define(HOLDING, 0x2001, 0x24)
        self.define(HOLDING, 0x3030, 0x60)
        self.set_u32(HOLDING, 0x3036, 0xFFFFFFFF)  # a meter that reports no export

    def measure(self, volts, watts, amps, import_kwh: float) -> None:  # noqa: ANN001
        for i in range(3):
            self.set_s16(HOLDING, 0x3040 + 8 * i, round(volts[i] * 100))
            self.set_s32(HOLDING, 0x3058 + 2 * i, round(amps[i] * 100))
            self.set_s32(HOLDING, 0x3082 + 4 * i, round(watts[i]))
        self.set_s32(HOLDING, 0x3080, round(sum(watts)))
        self.set_u32(HOLDING, 0x3034, round(import_kwh * 100))


class EvChargingStation(SimUnit):
    """Victron EV Charging Station (devices.md 3.12), holding registers from 5000: product
    id 5000, serial 5001 (6 registers, low byte first), firmware 5007-5008, mode 5009
    (0 manual, 1 auto, 2 scheduled; writable), start/stop 5010 (writable), power L1-L3 and
    total 5011-5014 (W), status 5015, set current 5016 (A, writable), max current 5017
    (writable), current 5018 (0.1 A), session time 5019-5020 (s), session energy 5021
    (0.01 kWh), session cost 5022, total energy 5023-5024 (0.01 kWh), position 5026,
    name 5027 (22 registers), autostart 5049, display 5050 (from v1.21-01), minimum current
    5062 (from v1.22-02). In manual mode a started charger draws the set current on three
    phases at 230 V."""

    def __init__(self, address: int = 1, *, product_id: int = 0xC023, serial: str = "EVC042",
                 firmware: int = 0x000122FF, name: str = "", **kw: object) -> None:
        super().__init__(address, name="EV Charging Station", **kw)  # type: ignore[arg-type]
        self.define(HOLDING, 5000, 50)
        self.set_u16(HOLDING, 5000, product_id)
        raw = serial.encode("ascii").ljust(12, b"\0")
        for i in range(6):
            self.holding[5001 + i] = raw[2 * i] | raw[2 * i + 1] << 8
        self.set_u32(HOLDING, 5007, firmware)
        if firmware >= 0x00012101:
            self.define(HOLDING, 5050, 1)
        if firmware >= 0x00012202:
            self.define(HOLDING, 5050, 13)
            self.set_u16(HOLDING, 5062, 6)
        self.allow_write(5009, values=range(3))
        self.allow_write(5010, values=range(2))
        self.allow_write(5016, values=range(33))
        self.allow_write(5017, values=range(33))
        self.allow_write(5049, values=range(2))
        self.allow_write(5027, 22)  # name, UTF-8, low byte first
        self.set_u16(HOLDING, 5016, 10)
        self.set_u16(HOLDING, 5017, 32)
        self.set_u32(HOLDING, 5023, 123456)  # 1234.56 kWh
        self.set_u16(HOLDING, 5015, 1)  # connected
        self.set_name(name)
        self._apply()

    def set_name(self, name: str) -> None:
        raw = name.encode("utf-8").ljust(44, b"\0")
        for i in range(22):
            self.holding[5027 + i] = raw[2 * i] | raw[2 * i + 1] << 8

    @property
    def name_text(self) -> str:
        raw = b"".join(bytes((self.holding[5027 + i] & 0xFF, self.holding[5027 + i] >> 8)) for i in range(22))
        return raw.split(b"\0", 1)[0].decode("utf-8")

    def applied_write(self, address: int, values: list[int]) -> None:
        self._apply()

    def _apply(self) -> None:
        charging = self.holding[5010] == 1 and self.holding[5009] == 0
        amps = self.holding[5016] if charging else 0
        for i in range(3):
            self.set_u16(HOLDING, 5011 + i, 230 * amps)
        self.set_u16(HOLDING, 5014, 3 * 230 * amps)
        self.set_u16(HOLDING, 5018, amps * 10)
        self.set_u16(HOLDING, 5015, 2 if charging else 1)


# --- Smappee Power Box --------------------------------------------------------------------------------


class SmappeePowerBox(SimUnit):
    """Smappee Power Box (MOD-VAC-1), unit 61, holding registers, 32-bit values low word
    first: device type 0x1620 (5400), serial number 0x1622-0x1623, version 0x1624 (minor)
    and 0x1625 (major); phase voltages f32 at 0x0000 + 4·phase; per CT slot: current f32
    0x0080 + 4·slot, power f32 0x0380 + 2·slot, energy import / export s32 Wh 0x3000 + 4·slot
    / + 2; CT phase 0x1000 + slot (1/2/4 L1-L3, 16/32/64 reversed, 0 none), CT type 0x1100 +
    slot, slot mapping 0x1140-0x115B, phase configuration 0x1180; bus devices at 0x1480 +
    0x20·n (type: 5500 CT hub; channel count; the slot of channel c at + 0x0A + c, skipping
    one register after the eighth); the virtual meter's slot mask 0x1400 (s32) with its
    power f32 0x03C0 and energies 0x3100 / 0x3102; frequency f32 0x03F8, nominal 0x03F6;
    0xFDE8 = 1 saves the configuration."""

    def __init__(self, address: int = 61, *, number: int = 123456, version: tuple[int, int] = (1, 44),
                 hub_slots: Sequence[int] = (4, 5, 6, 7), ct_phases: Sequence[int] = (0, 0, 0, 0), **kw: object) -> None:
        super().__init__(address, name="Smappee Power Box", **kw)  # type: ignore[arg-type]
        self.define(HOLDING, 0x0000, 0x400)
        self.define(HOLDING, 0x1000, 0x200)
        self.define(HOLDING, 0x1400, 0x220)  # virtual meter, 10 bus devices
        self.define(HOLDING, 0x1620, 8)
        self.define(HOLDING, 0x3000, 0x110)
        self.set_u16(HOLDING, 0x1620, 5400)
        self._u32le(0x1622, number)
        self.holding[0x1624], self.holding[0x1625] = version[1], version[0]
        self._f32le(0x03F6, 50.0)
        self._f32le(0x03F8, 50.0)
        self.set_u16(HOLDING, 0x1480, 5500)  # one CT hub
        self.set_u16(HOLDING, 0x1481, len(hub_slots))
        for c, slot in enumerate(hub_slots):
            self.set_u16(HOLDING, 0x1480 + 0x0A + c + (c > 7), slot)
            self.set_u16(HOLDING, 0x1000 + slot, ct_phases[c])
        self.allow_write(0x0900, MAX_SLOTS_SIM)  # identify: blink the CT's LED
        self.allow_write(0x1000, MAX_SLOTS_SIM)
        self.allow_write(0x1100, MAX_SLOTS_SIM, values=range(13))  # CT types
        self.allow_write(0x1140, MAX_SLOTS_SIM)
        self.allow_write(0x1400, 2)
        self.allow_write(0xFDE8)
        self.saved = 0
        self.volts = [230.0, 230.0, 230.0]
        self.slot_watts: dict[int, float] = {}
        self.slot_wh: dict[int, tuple[float, float]] = {}

    def _u32le(self, addr: int, value: int) -> None:
        v = int(value) & 0xFFFFFFFF
        self.holding[addr], self.holding[addr + 1] = v & 0xFFFF, v >> 16

    def _f32le(self, addr: int, value: float) -> None:
        hi, lo = struct.unpack(">HH", struct.pack(">f", float(value)))
        self.holding[addr], self.holding[addr + 1] = lo, hi

    def measure(self, volts: Sequence[float], slot_watts: Mapping[int, float],
                slot_wh: Mapping[int, tuple[float, float]], hz: float = 50.0) -> None:
        self.volts, self.slot_watts, self.slot_wh = list(volts), dict(slot_watts), dict(slot_wh)
        self._f32le(0x03F8, hz)
        self._refresh()

    def applied_write(self, address: int, values: list[int]) -> None:
        if address == 0xFDE8:
            self.saved += 1
        self._refresh()

    def phase_of(self, slot: int) -> int:
        return {1: 0, 16: 0, 2: 1, 32: 1, 4: 2, 64: 2}.get(self.holding[0x1000 + slot], -1)

    def _refresh(self) -> None:
        for ph in range(3):
            self._f32le(0x0000 + 4 * ph, self.volts[ph])
        for slot, w in self.slot_watts.items():
            ph = self.phase_of(slot)
            volts = self.volts[ph] if ph >= 0 else 230.0
            self._f32le(0x0080 + 4 * slot, abs(w) / volts)
            self._f32le(0x0380 + 2 * slot, w)
            imp, exp = self.slot_wh.get(slot, (0.0, 0.0))
            self._u32le(0x3000 + 4 * slot, round(imp))
            self._u32le(0x3002 + 4 * slot, round(exp))
        mask = self.holding[0x1400] | self.holding[0x1401] << 16
        in_mask = [s for s in range(MAX_SLOTS_SIM) if mask >> s & 1]
        self._f32le(0x03C0, sum(self.slot_watts.get(s, 0.0) for s in in_mask))
        self._u32le(0x3100, round(sum(self.slot_wh.get(s, (0.0, 0.0))[0] for s in in_mask)))
        self._u32le(0x3102, round(sum(self.slot_wh.get(s, (0.0, 0.0))[1] for s in in_mask)))


MAX_SLOTS_SIM = 28
