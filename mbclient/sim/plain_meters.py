"""Simulated meters without identification registers, each after its maker's register list.

* Hiking DDS238-2 ZN/S: holding u16/u32 big-endian: kWh total 0x0000 (u32 /100), export
  0x0008, import 0x000A (u32 /100), V 0x000C (/10), I 0x000D (/100), P 0x000E (s16 W),
  Q 0x000F, PF 0x0010 (/1000), Hz 0x0011 (/100), 0x0015 address (high byte) and baud code.
* ORNO WE-514 (single phase): Hz 0x0130 (/100), V 0x0131 (/100), I 0x0139 (u32 /1000),
  P 0x0140 (u32 W), kWh 0xA000 (u32 /100).
* ORNO WE-516 (three phase): float32 big-endian: V 0x0E/10/12, Hz 0x14, I 0x16/18/1A,
  P total 0x1C and L1-3 0x1E/20/22 in kW, PF 0x34, kWh total 0x100, import 0x108,
  export 0x110.
* Chint DTSU666: float32 big-endian "secondary values": Ua-c 0x2006/08/0A (x0.1 V),
  Ia-c 0x200C/0E/10 (x0.001 A), Pt 0x2012, Pa-c 0x2014/16/18 (x0.1 W), PFt 0x202A
  (x0.001), Freq 0x2044 (x0.01 Hz), import 0x401E, export 0x4028 (kWh).

Each holds one ``truth`` (physical units) that the tests compare the published values with.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from .unit import HOLDING, SimUnit


@dataclass
class MeterTruth:
    volts: tuple[float, ...] = (231.2, 229.4, 232.6)
    amps: tuple[float, ...] = (4.25, 3.5, 2.75)
    watts: tuple[float, ...] = (-950.0, 640.0, 512.0)  # import positive
    hertz: float = 49.97
    pf: float = 0.95
    import_kwh: float = 1234.56
    export_kwh: float = 789.01
    extra: dict[str, float] = field(default_factory=dict)

    @property
    def total_w(self) -> float:
        return sum(self.watts)


def dds238(address: int = 1, truth: MeterTruth | None = None) -> SimUnit:
    t = truth or MeterTruth()
    u = SimUnit(address, name="Hiking DDS238-2 ZN/S")
    u.define(HOLDING, 0, 0x16)
    u.set_u32(HOLDING, 0x0000, round((t.import_kwh + t.export_kwh) * 100))
    u.set_u32(HOLDING, 0x0008, round(t.export_kwh * 100))
    u.set_u32(HOLDING, 0x000A, round(t.import_kwh * 100))
    u.set_u16(HOLDING, 0x000C, round(t.volts[0] * 10))
    u.set_u16(HOLDING, 0x000D, round(t.amps[0] * 100))
    u.set_s16(HOLDING, 0x000E, round(t.watts[0]))
    u.set_u16(HOLDING, 0x0010, round(t.pf * 1000))
    u.set_u16(HOLDING, 0x0011, round(t.hertz * 100))
    u.set_u16(HOLDING, 0x0015, (address << 8) | 1)
    return u


def orno_we514(address: int = 1, truth: MeterTruth | None = None) -> SimUnit:
    t = truth or MeterTruth(watts=(950.0,))
    u = SimUnit(address, name="ORNO WE-514")
    u.define(HOLDING, 0x0130, 0x20)
    u.set_u16(HOLDING, 0x0130, round(t.hertz * 100))
    u.set_u16(HOLDING, 0x0131, round(t.volts[0] * 100))
    u.set_u32(HOLDING, 0x0139, round(t.amps[0] * 1000))
    u.set_u32(HOLDING, 0x0140, round(t.watts[0]))
    u.define(HOLDING, 0xA000, 2)
    u.set_u32(HOLDING, 0xA000, round(t.import_kwh * 100))
    return u


def orno_we516(address: int = 1, truth: MeterTruth | None = None) -> SimUnit:
    t = truth or MeterTruth()
    u = SimUnit(address, name="ORNO WE-516")
    u.define(HOLDING, 0x000E, 0x36 - 0x0E)
    for i in range(3):
        u.set_f32(HOLDING, 0x0E + 2 * i, t.volts[i])
        u.set_f32(HOLDING, 0x16 + 2 * i, t.amps[i])
        u.set_f32(HOLDING, 0x1E + 2 * i, t.watts[i] / 1000)
    u.set_f32(HOLDING, 0x14, t.hertz)
    u.set_f32(HOLDING, 0x1C, t.total_w / 1000)
    u.set_f32(HOLDING, 0x34, t.pf)
    u.define(HOLDING, 0x0100, 0x20)
    u.set_f32(HOLDING, 0x0100, t.import_kwh + t.export_kwh)
    u.set_f32(HOLDING, 0x0108, t.import_kwh)
    u.set_f32(HOLDING, 0x0110, t.export_kwh)
    return u


def dtsu666(address: int = 1, truth: MeterTruth | None = None) -> SimUnit:
    t = truth or MeterTruth()
    u = SimUnit(address, name="Chint DTSU666")
    u.define(HOLDING, 0x2000, 0x48)
    for i in range(3):
        u.set_f32(HOLDING, 0x2006 + 2 * i, t.volts[i] * 10)
        u.set_f32(HOLDING, 0x200C + 2 * i, t.amps[i] * 1000)
        u.set_f32(HOLDING, 0x2014 + 2 * i, t.watts[i] * 10)
    u.set_f32(HOLDING, 0x2012, t.total_w * 10)
    u.set_f32(HOLDING, 0x202A, t.pf * 1000)
    u.set_f32(HOLDING, 0x2044, t.hertz * 100)
    u.define(HOLDING, 0x401E, 0x0C)
    u.set_f32(HOLDING, 0x401E, t.import_kwh)
    u.set_f32(HOLDING, 0x4028, t.export_kwh)
    return u


PLAIN_METERS = {"dds238": dds238, "orno_we514": orno_we514, "orno_we516": orno_we516, "dtsu666": dtsu666}

__all__ = ["MeterTruth", "PLAIN_METERS", "dds238", "dtsu666", "orno_we514", "orno_we516", "shelly_pro3em"]


def _swapped_text(u: SimUnit, table: str, addr: int, nregs: int, text: str) -> None:
    """Shelly's texts: two characters per register, the pair stored low byte first."""
    raw = text.encode("ascii")[: 2 * nregs].ljust(2 * nregs, b"\0")
    bank = u.bank(table)
    for i in range(nregs):
        bank[addr + i] = (raw[2 * i + 1] << 8) | raw[2 * i]


def _f32le(u: SimUnit, table: str, addr: int, value: float) -> None:
    import struct

    hi, lo = struct.unpack(">HH", struct.pack(">f", float(value)))
    bank = u.bank(table)
    bank[addr], bank[addr + 1] = lo, hi


def shelly_pro3em(address: int = 1, truth: MeterTruth | None = None, *, serial: str = "ECC9FF1A2B3C",
                  per_phase_kwh: tuple[tuple[float, float], ...] = ((400.0, 300.0), (434.56, 250.0),
                                                                   (400.0, 239.01))) -> SimUnit:
    """Shelly Pro 3EM (Modbus TCP, input registers): its documented 3xxxx numbers minus
    30000; float32 low word first; texts with each register's bytes swapped."""
    from .unit import INPUT

    t = truth or MeterTruth()
    u = SimUnit(address, name="Shelly Pro 3EM")
    u.define(INPUT, 0, 16)
    _swapped_text(u, INPUT, 0, 6, serial)
    _swapped_text(u, INPUT, 6, 10, "SPEM-003CEBEU")
    u.define(INPUT, 1000, 80)
    _f32le(u, INPUT, 1013, t.total_w)
    for n in range(3):
        base = 1020 + 20 * n
        _f32le(u, INPUT, base, t.volts[n])
        _f32le(u, INPUT, base + 2, t.amps[n])
        _f32le(u, INPUT, base + 4, t.watts[n])
    u.define(INPUT, 1160, 70)
    _f32le(u, INPUT, 1162, t.import_kwh * 1000)
    _f32le(u, INPUT, 1164, t.export_kwh * 1000)
    for n, (imp, exp) in enumerate(per_phase_kwh):
        _f32le(u, INPUT, 1182 + 20 * n, imp * 1000)
        _f32le(u, INPUT, 1184 + 20 * n, exp * 1000)
    return u
