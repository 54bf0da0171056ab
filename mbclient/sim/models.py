"""Simulated devices with the register maps of ``shared/reference/registers.md``.

Eastron SDM meters (f32 input registers, identity in holding 0xFC00/0xFC02) and the
Growatt MIN TL-X inverter (legacy input block 0-124, holding 0-124, 209-223, 3000).
Values are not constants: ``EastronMeter.measure`` and ``GrowattMin.step`` are driven by
``mbclient.sim.site.Site`` (or by a test), and the Growatt's output follows its active
power rate (holding 3) through a first-order response, as a real inverter ramps.

Registers a model does not have answer exception 2, so drivers meet the same barriers
as on hardware (three-phase-only registers on a single-phase meter, holes between blocks).
"""

from __future__ import annotations

import math
import struct
from collections.abc import Iterable, Sequence

from .unit import HOLDING, ILLEGAL_ADDRESS, ILLEGAL_VALUE, INPUT, SimUnit

# --- Eastron SDM -----------------------------------------------------------------------------

# Meter codes at holding 0xFC02 (registers.md 2.3). The SDM230 has no documented code: the
# simulator answers SDM230_DEFAULT_CODE unless told otherwise, 0x0000, the value some early
# SDM630 also return, so a driver that trusts the code alone is caught by the tests.
SDM120_CODE = 0x0020
SDM630_CODE = 0x0070
SDM72D_CODE = 0x0084
SDM72D_V2_CODE = 0x0089
SDM230_DEFAULT_CODE = 0x0000

# Baud codes at holding 0x001C: 0 = 2400, 1 = 4800, 2 = 9600, 5 = 1200 (SDM120/230 style).
# The higher rates of SDM630/SDM72 are not documented well enough to model (3 = 19200,
# 4 = 38400 are the usual guess and are accepted there).
BAUD_CODES = {0: 2400, 1: 4800, 2: 9600, 5: 1200}
BAUD_CODES_3P = {0: 2400, 1: 4800, 2: 9600, 3: 19200, 4: 38400, 5: 1200}


def _per_phase(base: int, phases: int) -> list[int]:
    return [base + 2 * i for i in range(phases)]


def _sdm_single_phase_inputs(extra: Iterable[int] = ()) -> list[int]:
    regs = [0x00, 0x06, 0x0C, 0x12, 0x18, 0x1E, 0x24, 0x46, 0x48, 0x4A, 0x4C, 0x4E]
    regs += [0x54, 0x56, 0x58, 0x5A, 0x5C, 0x5E, 0x156, 0x158]
    return regs + list(extra)


def _sdm630_inputs() -> list[int]:
    regs: list[int] = []
    for base in (0x00, 0x06, 0x0C, 0x12, 0x18, 0x1E, 0x24):
        regs += _per_phase(base, 3)
    regs += [0x2A, 0x2E, 0x30, 0x34, 0x38, 0x3C, 0x3E, 0x42, 0x46, 0x48, 0x4A, 0x4C, 0x4E, 0x54, 0x56]
    regs += [0xC8, 0xCA, 0xCC, 0xCE, 0xEA, 0xEC, 0xEE, 0xF0, 0xF2, 0xF4, 0xF8, 0xFA, 0x156, 0x158]
    regs += list(range(0x15A, 0x17D, 2))
    return regs


def _sdm72d_inputs(version: int) -> list[int]:
    if version == 1:
        return [0x34, 0x48, 0x4A, 0x156, 0x180, 0x184, 0x186, 0x500, 0x502]
    regs: list[int] = []
    for base in (0x00, 0x06, 0x0C, 0x12, 0x18, 0x1E):
        regs += _per_phase(base, 3)
    return regs + [0x34, 0x38, 0x3C, 0x3E, 0x46, 0x48, 0x4A, 0x156, 0x158]


def f32_regs(value: float) -> tuple[int, int]:
    hi, lo = struct.unpack(">HH", struct.pack(">f", float(value)))
    return hi, lo


def regs_f32(hi: int, lo: int) -> float:
    return struct.unpack(">f", struct.pack(">HH", hi, lo))[0]


class EastronMeter(SimUnit):
    """An Eastron SDM meter. ``measure()`` sets instantaneous values, ``advance(dt)``
    integrates the energy registers (import when power > 0, export when < 0)."""

    def __init__(
        self,
        address: int,
        *,
        model: str,
        serial: int,
        meter_code: int | None,
        phases: int,
        inputs: Sequence[int],
        baud_codes: dict[int, int],
        baud: int = 9600,
        firmware: int = 0x0102,
        turnaround: float = 0.020,
        seed: int | None = None,
    ) -> None:
        super().__init__(address, turnaround=turnaround, seed=seed, name=model)
        self.model = model
        self.phases = phases
        self.baud_codes = baud_codes
        self.input_addrs = frozenset(inputs)
        for a in inputs:
            self.set_f32(INPUT, a, 0.0)
        self.serial = serial
        self.set_u32(HOLDING, 0xFC00, serial)
        if meter_code is not None:
            self.set_u16(HOLDING, 0xFC02, meter_code)
        self.set_u16(HOLDING, 0xFC03, firmware)
        code = next((c for c, b in baud_codes.items() if b == baud), 2)
        # Configuration parameters (f32, one parameter per FC16 write).
        self._params: dict[int, object] = {
            0x000C: {60.0, 100.0, 200.0},  # pulse width ms
            0x0012: {0.0, 1.0, 2.0, 3.0},  # parity / stop bits
            0x0014: (1.0, 247.0),  # Modbus address
            0x001C: {float(c) for c in baud_codes},
        }
        for a, v in ((0x000C, 100.0), (0x0012, 0.0), (0x0014, float(address)), (0x001C, float(code))):
            self.set_f32(HOLDING, a, v)
        if phases == 3:
            self._params[0x0002] = {0.0, 5.0, 8.0, 10.0, 15.0, 20.0, 30.0, 60.0}  # demand period
            self.set_f32(HOLDING, 0x0002, 60.0)
            self._params[0x000A] = {1.0, 2.0, 3.0}  # system type
            self.set_f32(HOLDING, 0x000A, 3.0)
        for a in self._params:
            self.allow_write(a, 2)
        self.import_kwh = [0.0] * phases
        self.export_kwh = [0.0] * phases
        self.import_kvarh = 0.0
        self.export_kvarh = 0.0
        self.power = [0.0] * phases
        self.voltage = [230.0] * phases
        self.frequency = 50.0
        self.power_factor = 1.0
        self.measure([0.0] * phases)

    # -- configuration writes ---------------------------------------------------------------
    def validate_write(self, address: int, values: list[int]) -> int | None:
        if address not in self._params or len(values) != 2:
            return ILLEGAL_ADDRESS  # one whole f32 parameter per write
        value = regs_f32(*values)
        allowed = self._params[address]
        if isinstance(allowed, tuple):
            ok = allowed[0] <= value <= allowed[1] and value == int(value)
        else:
            ok = value in allowed  # type: ignore[operator]
        return None if ok else ILLEGAL_VALUE

    @property
    def baud_code(self) -> int:
        return int(self.get_f32(HOLDING, 0x001C))

    # -- physics ---------------------------------------------------------------------------
    def _set(self, addr: int, value: float) -> None:
        if addr in self.input_addrs:
            self.set_f32(INPUT, addr, value)

    def measure(
        self,
        power: float | Sequence[float],
        *,
        voltage: float | Sequence[float] | None = None,
        frequency: float | None = None,
        power_factor: float | None = None,
    ) -> None:
        """Instantaneous readings; ``power`` in W per phase (+ import, - export)."""
        p = [float(power)] * self.phases if isinstance(power, (int, float)) else [float(x) for x in power]
        if len(p) != self.phases:
            raise ValueError(f"{self.model} has {self.phases} phase(s), got {len(p)} powers")
        if voltage is not None:
            self.voltage = [float(voltage)] * self.phases if isinstance(voltage, (int, float)) else list(voltage)
        if frequency is not None:
            self.frequency = float(frequency)
        if power_factor is not None:
            self.power_factor = float(power_factor)
        self.power = p
        pf = self.power_factor or 1.0
        angle = math.degrees(math.acos(max(-1.0, min(1.0, abs(pf)))))
        for i in range(self.phases):
            v = self.voltage[i]
            va = abs(p[i]) / abs(pf)
            var = math.sqrt(max(0.0, va * va - p[i] * p[i]))
            self._set(0x00 + 2 * i, v)
            self._set(0x06 + 2 * i, va / v if v else 0.0)
            self._set(0x0C + 2 * i, p[i])
            self._set(0x12 + 2 * i, va)
            self._set(0x18 + 2 * i, var)
            self._set(0x1E + 2 * i, pf)
            self._set(0x24 + 2 * i, angle)
        total = sum(p)
        self._set(0x2A, sum(self.voltage) / self.phases)
        currents = [abs(p[i]) / abs(pf) / self.voltage[i] for i in range(self.phases) if self.voltage[i]]
        self._set(0x2E, sum(currents) / max(1, len(currents)))
        self._set(0x30, sum(currents))
        self._set(0x34, total)
        self._set(0x38, abs(total) / abs(pf))
        self._set(0x3E, pf)
        self._set(0x46, self.frequency)
        self._set(0x54, total)
        self._set(0x58, max(0.0, total))
        self._set(0x5C, max(0.0, -total))
        self._set(0x0500, max(0.0, total))
        self._set(0x0502, max(0.0, -total))
        self._set(0x0102, sum(currents))
        self._publish_energy()

    def advance(self, dt: float) -> None:
        """Integrate ``dt`` seconds of the current power into the energy counters."""
        for i, p in enumerate(self.power):
            if p >= 0:
                self.import_kwh[i] += p * dt / 3.6e6
            else:
                self.export_kwh[i] -= p * dt / 3.6e6
        self._publish_energy()

    def _publish_energy(self) -> None:
        imp, exp = sum(self.import_kwh), sum(self.export_kwh)
        self._set(0x48, imp)
        self._set(0x4A, exp)
        self._set(0x4C, self.import_kvarh)
        self._set(0x4E, self.export_kvarh)
        self._set(0x156, imp + exp)
        self._set(0x158, self.import_kvarh + self.export_kvarh)
        self._set(0x180, imp + exp)
        self._set(0x184, imp)
        self._set(0x186, exp)
        for i in range(self.phases):
            self._set(0x15A + 2 * i, self.import_kwh[i])
            self._set(0x160 + 2 * i, self.export_kwh[i])
            self._set(0x166 + 2 * i, self.import_kwh[i] + self.export_kwh[i])

    def set_energy(self, import_kwh: float, export_kwh: float = 0.0) -> None:
        """Start the counters somewhere realistic (split evenly over the phases)."""
        self.import_kwh = [import_kwh / self.phases] * self.phases
        self.export_kwh = [export_kwh / self.phases] * self.phases
        self._publish_energy()


def sdm230(
    address: int = 2, *, serial: int = 23000123, meter_code: int | None = SDM230_DEFAULT_CODE, **kw: object
) -> EastronMeter:
    """SDM230-Modbus: single phase, with demand and resettable registers.

    ``meter_code`` is a guess (no documented code; default 0x0000), None leaves 0xFC02
    undefined (exception 2).
    """
    inputs = _sdm_single_phase_inputs([0x102, 0x108, 0x180, 0x182])
    return EastronMeter(
        address, model="SDM230", serial=serial, meter_code=meter_code, phases=1,
        inputs=inputs, baud_codes=BAUD_CODES, **kw,  # type: ignore[arg-type]
    )


def sdm120(address: int = 1, *, serial: int = 12000123, meter_code: int | None = SDM120_CODE, **kw: object) -> EastronMeter:
    return EastronMeter(
        address, model="SDM120", serial=serial, meter_code=meter_code, phases=1,
        inputs=_sdm_single_phase_inputs(), baud_codes=BAUD_CODES, **kw,  # type: ignore[arg-type]
    )


def sdm630(address: int = 1, *, serial: int = 63000123, meter_code: int | None = SDM630_CODE, **kw: object) -> EastronMeter:
    return EastronMeter(
        address, model="SDM630", serial=serial, meter_code=meter_code, phases=3,
        inputs=_sdm630_inputs(), baud_codes=BAUD_CODES_3P, **kw,  # type: ignore[arg-type]
    )


def sdm72d(
    address: int = 1, *, serial: int = 72000123, version: int = 2, meter_code: int | None = None, **kw: object
) -> EastronMeter:
    """SDM72D-M: version 2 has per-phase values, version 1 only totals."""
    if version not in (1, 2):
        raise ValueError("SDM72D-M version is 1 or 2")
    code = meter_code if meter_code is not None else (SDM72D_V2_CODE if version == 2 else SDM72D_CODE)
    return EastronMeter(
        address, model=f"SDM72D-M{' V2' if version == 2 else ''}", serial=serial, meter_code=code, phases=3,
        inputs=_sdm72d_inputs(version), baud_codes=BAUD_CODES_3P, **kw,  # type: ignore[arg-type]
    )


# --- Growatt MIN TL-X ---------------------------------------------------------------------------

GROWATT_WAITING = 0
GROWATT_NORMAL = 1
GROWATT_FAULT = 3
NO_LIMIT = 255


def _s16_range(lo: int, hi: int, also: Iterable[int] = ()) -> frozenset[int]:
    return frozenset({v & 0xFFFF for v in range(lo, hi + 1)} | set(also))


# Holding registers a MIN accepts writes to (registers.md 1.5, R/W column "W"), with the
# documented value ranges. None = any 16-bit value (no documented range).
_GROWATT_WRITABLE: dict[int, object] = {
    0: {0, 1},
    1: None,
    2: {0, 1},
    3: _s16_range(0, 100, {NO_LIMIT}),
    4: _s16_range(-100, 100, {NO_LIMIT}),
    5: range(0, 20001),
    15: range(0, 9),
    16: {0, 1},
    17: None,
    18: None,
    19: None,
    20: range(1, 1001),
    21: range(1, 1001),
    22: {0, 1},
    30: range(1, 255),
    31: None,  # firmware update start: writable on hardware, never to be written
    32: None,  # reset user info: idem
    33: None,  # factory reset: idem
    42: {0, 1},
    45: None, 46: None, 47: None, 48: None, 49: None, 50: None, 51: range(0, 7),
    80: None,
    81: None,
    89: range(0, 8),
    122: range(0, 4),
    123: _s16_range(-1000, 1000),
    124: range(0, 3),
    3000: range(0, 1001),
}
for _a in list(range(52, 80)) + list(range(91, 101)) + list(range(107, 118)):
    _GROWATT_WRITABLE.setdefault(_a, None)


class GrowattMin(SimUnit):
    """Growatt MIN TL-X, single phase, 2 MPPT.

    Physics: ``available_w`` (set by the site: what the sun offers at the AC side) and the
    active power rate (holding 3, % of rated, 255 = no limit) give the target output;
    ``step(dt)`` moves the output towards it with time constant ``tau`` and integrates
    energy. With holding 2 = 0 (the default) a restart (dawn) forgets holding 3, 4, 5.
    """

    def __init__(
        self,
        address: int = 1,
        *,
        serial: str = "QXB1234567",
        rated_w: int = 4200,
        dtc: int = 5100,
        firmware: str = "DH1.0 ",
        control_firmware: str = "ZBdh02",
        tau: float = 1.0,
        turnaround: float = 0.030,
        seed: int | None = None,
    ) -> None:
        super().__init__(address, turnaround=turnaround, seed=seed, name="Growatt MIN TL-X")
        self.serial = serial
        self.rated_w = rated_w
        self.tau = tau
        self.available_w = 0.0
        self.output_w = 0.0
        self.frequency = 50.0
        self.grid_voltage = 230.0
        self.eac_today = 0.0  # kWh
        self.eac_total = 0.0
        self.epv_today = [0.0, 0.0]
        self.epv_total = [0.0, 0.0]
        self.operating_s = 0.0
        self.temperature = 25.0
        self.fault_code = 0  # input 105; non-zero makes status 3 and output 0
        self.running = True  # False while "waiting" after a start
        self.define(INPUT, 0, 125)
        self.define(HOLDING, 0, 125)
        self._init_holding(address, dtc, firmware, control_firmware)
        for a, rule in _GROWATT_WRITABLE.items():
            self.allow_write(a, 1, values=rule)  # type: ignore[arg-type]
        self.publish()

    def _init_holding(self, address: int, dtc: int, firmware: str, control_firmware: str) -> None:
        h = HOLDING
        self.set_u16(h, 0, 1)
        self.set_u16(h, 1, 0x0017)
        self.set_u16(h, 2, 0)  # commands to 3/4/5 are not kept across restarts
        self.set_u16(h, 3, NO_LIMIT)
        self.set_u16(h, 4, NO_LIMIT)
        self.set_u16(h, 5, 0)
        self.set_u32(h, 6, self.rated_w * 10)  # Pmax, 0.1 VA
        self.set_u16(h, 8, 3600)  # nominal PV voltage 360.0 V
        self.set_text(h, 9, 3, firmware)
        self.set_text(h, 12, 3, control_firmware)
        self.set_u16(h, 15, 1)
        self.set_u16(h, 16, 1)
        self.set_u16(h, 17, 800)  # PV start voltage 80.0 V
        self.set_u16(h, 18, 60)
        self.set_u16(h, 19, 60)
        self.set_u16(h, 20, 100)
        self.set_u16(h, 21, 100)
        self.set_u16(h, 22, 0)  # 9600 Bd
        self.set_text(h, 23, 5, self.serial[:10])
        self.set_u32(h, 28, 0x00010203)
        self.set_u16(h, 30, address)
        self.set_text(h, 34, 8, "Growatt Inverter")
        self.set_u16(h, 42, 0)
        self.set_u16(h, 43, dtc)
        self.set_u16(h, 44, 0x0201)  # 2 MPPT, single phase
        self.set_u16(h, 88, 207)
        self.set_u16(h, 122, 0)
        self.set_u16(h, 123, 0)
        self.set_u16(h, 124, 0)
        self.set_text(h, 209, 15, self.serial)
        self.set_u16(h, 3000, 1000)
        self.set_text(h, 3001, 15, self.serial)

    # -- limits ----------------------------------------------------------------------------
    @property
    def rate(self) -> int:
        """Active power rate in % (holding 3); 255 means no limit (100 %)."""
        return self.holding[3]

    @property
    def limit_w(self) -> float:
        r = self.rate
        return float(self.rated_w) if r == NO_LIMIT else self.rated_w * min(r, 100) / 100.0

    @property
    def target_w(self) -> float:
        if not self.running or self.fault_code or self.holding[0] == 0:
            return 0.0
        return max(0.0, min(self.available_w, self.limit_w))

    def restart(self) -> None:
        """Power-on (e.g. waking at dawn): forgets 3/4/5 unless holding 2 says keep them."""
        if self.holding[2] == 0:
            self.holding[3] = NO_LIMIT
            self.holding[4] = NO_LIMIT
            self.holding[5] = 0
        self.output_w = 0.0
        self.eac_today = 0.0
        self.epv_today = [0.0, 0.0]
        self.publish()

    # -- physics ---------------------------------------------------------------------------
    def step(self, dt: float, *, energy_dt: float | None = None) -> None:
        """Advance ``dt`` real seconds (output response); energies integrate over
        ``energy_dt`` (simulated seconds; defaults to ``dt``)."""
        edt = dt if energy_dt is None else energy_dt
        target = self.target_w
        if self.tau <= 0 or dt >= 20 * self.tau:
            self.output_w = target
        elif dt > 0:
            self.output_w += (target - self.output_w) * (1.0 - math.exp(-dt / self.tau))
        if edt > 0:
            kwh = self.output_w * edt / 3.6e6
            self.eac_today += kwh
            self.eac_total += kwh
            pv = self.pv_w
            for i, share in enumerate(self.string_share):
                self.epv_today[i] += pv * share * edt / 3.6e6
                self.epv_total[i] += pv * share * edt / 3.6e6
            if self.output_w > 0:
                self.operating_s += edt
        self.temperature += (25.0 + self.output_w / 150.0 - self.temperature) * min(1.0, edt / 600.0)
        self.publish()

    string_share = (0.6, 0.4)
    efficiency = 0.97

    @property
    def pv_w(self) -> float:
        return self.output_w / self.efficiency if self.output_w > 0 else 0.0

    def publish(self) -> None:
        """Write the physics into the input registers (all in one go, like a real DSP)."""
        i = INPUT
        status = GROWATT_FAULT if self.fault_code else (GROWATT_NORMAL if self.running else GROWATT_WAITING)
        self.set_u16(i, 0, status)
        pv = self.pv_w
        self.set_u32(i, 1, round(pv * 10))
        for n, share in enumerate(self.string_share):
            base = 3 + 4 * n
            p = pv * share
            v = 320.0 + 10.0 * n if p > 0 else 0.0
            self.set_u16(i, base, round(v * 10))
            self.set_u16(i, base + 1, round((p / v if v else 0.0) * 10))
            self.set_u32(i, base + 2, round(p * 10))
        pac = self.output_w
        self.set_u32(i, 35, round(pac * 10))
        self.set_u16(i, 37, round(self.frequency * 100))
        self.set_u16(i, 38, round(self.grid_voltage * 10))
        self.set_u16(i, 39, round(pac / self.grid_voltage * 10))
        self.set_u32(i, 40, round(pac * 10))
        self.set_u32(i, 53, round(self.eac_today * 10))
        self.set_u32(i, 55, round(self.eac_total * 10))
        self.set_u32(i, 57, round(self.operating_s * 2))
        for n in range(2):
            self.set_u32(i, 59 + 4 * n, round(self.epv_today[n] * 10))
            self.set_u32(i, 61 + 4 * n, round(self.epv_total[n] * 10))
        self.set_u32(i, 91, round(sum(self.epv_total) * 10))
        t = round(self.temperature * 10)
        self.set_u16(i, 93, t)
        self.set_u16(i, 94, t + 20)
        self.set_u16(i, 95, t + 10)
        self.set_u16(i, 100, 10000)
        percent = 100 if self.rate == NO_LIMIT else min(self.rate, 100)
        self.set_u16(i, 101, percent)
        self.set_u32(i, 102, round(self.limit_w * 10))
        self.set_u16(i, 104, 7 if percent < 100 and pac >= self.limit_w * 0.95 else 0)
        self.set_u16(i, 105, self.fault_code)
        self.set_u16(i, 113, percent)

    def applied_write(self, address: int, values: list[int]) -> None:
        self.publish()  # read-backs (101-103) follow a new limit at once

    def set_energy(self, total_kwh: float, today_kwh: float = 0.0) -> None:
        self.eac_total = total_kwh
        self.eac_today = today_kwh
        self.epv_total = [total_kwh / self.efficiency * s for s in self.string_share]
        self.publish()


def growatt_min(address: int = 1, *, serial: str = "QXB1234567", rated_w: int = 4200, **kw: object) -> GrowattMin:
    """Growatt MIN TL-X (DTC 5100 as the ieb fork's MIN 4200 TL-X reported)."""
    return GrowattMin(address, serial=serial, rated_w=rated_w, **kw)  # type: ignore[arg-type]


MODELS = {
    "sdm120": sdm120,
    "sdm230": sdm230,
    "sdm630": sdm630,
    "sdm72d": sdm72d,
    "growatt_min": growatt_min,
}


class GrowattMod(GrowattMin):
    """Growatt MOD TL3-X: the MIN's table plus three phases (holding 44 low byte 3; input
    38-49 Vac/Iac/Pac of R, S and T after Growatt's protocol v1.24 input table). The output
    is split evenly over the phases; Pac per phase in 0.1 VA (unity power factor here)."""

    def __init__(self, address: int = 1, *, serial: str = "MOD1234567", rated_w: int = 10000,
                 phase_voltages: tuple[float, float, float] = (230.2, 231.4, 229.6), **kw: object) -> None:
        self.phase_voltages = phase_voltages
        super().__init__(address, serial=serial, rated_w=rated_w, dtc=5200, **kw)  # type: ignore[arg-type]
        self.set_u16(HOLDING, 44, 0x0203)  # 2 MPPT, three phases
        self.name = "Growatt MOD TL3-X"
        self.publish()

    def publish(self) -> None:
        super().publish()
        if not hasattr(self, "phase_voltages"):
            return
        pac = self.output_w / 3
        for n, v in enumerate(self.phase_voltages):
            base = 38 + 4 * n
            self.set_u16(INPUT, base, round(v * 10))
            self.set_u16(INPUT, base + 1, round(pac / v * 10))
            self.set_u32(INPUT, base + 2, round(pac * 10))


def growatt_mod(address: int = 1, *, serial: str = "MOD1234567", rated_w: int = 10000, **kw: object) -> GrowattMod:
    return GrowattMod(address, serial=serial, rated_w=rated_w, **kw)


class GrowattSph(GrowattMin):
    """Growatt SPH storage inverter: the MIN's common input block plus the storage block
    1000-1124 (Growatt protocol v1.24 input table): system mode 1000, discharge/charge
    power 1009/1011 (u32, 0.1 W), battery voltage 1013 (0.1 V), SoC 1014 (%), power to
    user R/S/T/total 1015-1022 and to grid 1023-1030 (u32, 0.1 W), energy to user/grid
    total 1046/1050 (u32, 0.1 kWh). ``house_w`` is the load; the grid flow is load minus
    the inverter's AC output."""

    def __init__(self, address: int = 1, *, serial: str = "SPH1234567", rated_w: int = 6000, **kw: object) -> None:
        self.house_w = 1500.0
        self.soc = 64
        self.battery_v = 52.3
        self.charge_w = 250.0
        self.import_kwh, self.export_kwh = 432.1, 876.5
        super().__init__(address, serial=serial, rated_w=rated_w, dtc=3502, **kw)  # type: ignore[arg-type]
        self.define(INPUT, 1000, 125)
        self.name = "Growatt SPH"
        self.publish()

    def publish(self) -> None:
        super().publish()
        if 1000 not in self.input:
            return
        grid = self.house_w - self.output_w
        to_user, to_grid = max(grid, 0.0), max(-grid, 0.0)
        self.set_u16(INPUT, 1000, 5 if self.output_w > 0 else 0)
        self.set_u32(INPUT, 1009, 0)
        self.set_u32(INPUT, 1011, round(self.charge_w * 10))
        self.set_u16(INPUT, 1013, round(self.battery_v * 10))
        self.set_u16(INPUT, 1014, self.soc)
        self.set_u32(INPUT, 1015, round(to_user * 10))
        self.set_u32(INPUT, 1021, round(to_user * 10))
        self.set_u32(INPUT, 1023, round(to_grid * 10))
        self.set_u32(INPUT, 1029, round(to_grid * 10))
        self.set_u32(INPUT, 1046, round(self.import_kwh * 10))
        self.set_u32(INPUT, 1050, round(self.export_kwh * 10))
