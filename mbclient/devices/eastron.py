"""Eastron SDM energy meters: SDM230, SDM120, SDM630, SDM72D-M (V2 and V1).

All measurements are big-endian float32 input registers (registers.md 2.2); identity is
the serial number (holding 0xFC00, u32) and the meter code (holding 0xFC02). Reads start
at an even address with an even count and carry at most 80 registers (60 on the SDM72D),
as community sources report the meters demand.

Recognising the SDM230 (its meter code is undocumented)
--------------------------------------------------------
``detect`` never trusts an unknown code alone, because early SDM630 also answer 0x0000:

1. the unit must answer holding 0xFC00 (serial) - Growatt and other non-Eastron units
   answer exception 2 or nothing there;
2. a documented code (SDM120 0x0020, SDM630 0x0070/0x0079, SDM72D-M 0x0084, V2 0x0089)
   selects that model, whatever else the meter says;
3. any other code (0x0000 or undocumented): input 0x0000 must hold a plausible mains
   voltage (50..500 V as float32; a Growatt's input 0-1 decode to a tiny denormal), and
   the phase registers decide: input
   0x0002-0x0005 (L2/L3 voltage) answering exception 2 means a single-phase meter -> SDM230;
   a live L2 or L3 voltage means a three-phase meter -> SDM630 if the code is 0x0000 (the
   early SDM630), otherwise no match; both zero is ambiguous -> no match (name the model
   in the spec, ``:sdm230``).

So an SDM630 is never taken for an SDM230 (it either has its code or live/answering L2/L3
registers), an SDM230 never for an SDM630 (it has no L2/L3 registers), and a Growatt never
for a meter (step 1).
"""

from __future__ import annotations

import struct
from typing import TYPE_CHECKING

from ..errors import ModbusExceptionResponse
from ..registers import (
    F32,
    FAST,
    HOLDING,
    INPUT,
    NORMAL,
    SLOW,
    U16,
    U32,
    BlockRules,
    Derived,
    Register,
    difference,
    total,
)
from . import register_detector, register_model
from .base import METER_ROLES, Driver, Identity, Model

if TYPE_CHECKING:
    from ..transports.base import UnitClient

#: Product ids: no id is reserved for third-party meters, so mbclient uses its own range
#: 0xFE00-0xFEFF (0xFE0x Eastron, 0xFE1x Growatt). Victron's own ids in use are 0x0xxx
#: (VE.Bus), 0xA0xx-0xA3xx (chargers, shunts, Fronius/SunSpec 0xA142-0xA146, meters
#: 0xA1B1/0xA1B2) and 0xB0xx/0xC0xx (dbus-modbus-client meters, gensets, EV chargers).
PRODUCT_SDM230 = 0xFE01
PRODUCT_SDM120 = 0xFE02
PRODUCT_SDM630 = 0xFE03
PRODUCT_SDM72D = 0xFE04
PRODUCT_SDM72D_V1 = 0xFE05

CODE_SDM120 = 0x0020
CODE_SDM630 = 0x0070
CODE_SDM630MCT = 0x0079
CODE_SDM72D_V1 = 0x0084
CODE_SDM72D_V2 = 0x0089

# Eastron documents 80 registers per read, but some meters in the field answer exception 2
# from 51 registers on (openWB/core PR #2890), so stay at 50: it costs at most one extra
# read of the slow energy block.
RULES = BlockRules(max_count=50, align=2)
RULES_SDM72 = BlockRules(max_count=60, align=2)


def f32(address: int, name: str, unit: str, precision: int, refresh, **kw) -> Register:  # noqa: ANN001
    """One float32 input register (all Eastron measurements)."""
    return Register(name, address, F32, INPUT, unit=unit, precision=precision, refresh=refresh, **kw)


def phase(n: int, *, power_total: bool = False) -> list[Register]:
    """Voltage, current, power and power factor of phase ``n`` (1-based).

    Only power is FAST: it is what ESS and the zero-export controller close their loops on,
    and on its own it is the smallest read there is (2 registers per phase, 42 ms at 9600 Bd
    with a 20 ms turnaround). Voltage and current change slowly and follow at NORMAL; read
    with power they would triple the fast read on an SDM230, whose single-phase map has
    holes between them (0x02-0x05, 0x08-0x0B).
    """
    o = 2 * (n - 1)
    also_power = ("/Ac/Power",) if power_total else ()
    return [
        f32(0x00 + o, f"/Ac/L{n}/Voltage", "V", 1, NORMAL),
        f32(0x06 + o, f"/Ac/L{n}/Current", "A", 2, NORMAL, asleep=0.0),
        f32(0x0C + o, f"/Ac/L{n}/Power", "W", 1, FAST, also=also_power, asleep=0.0),
        f32(0x1E + o, f"/Ac/L{n}/PowerFactor", "", 3, NORMAL, also=("/Ac/PowerFactor",) if power_total else ()),
    ]


def energy(forward: int, reverse: int, n: int | None = None, totals: bool = False) -> list[Register]:
    """Import/export counters (kWh) of phase ``n`` or, with ``n=None``, of the meter."""
    base = f"/Ac/L{n}/Energy" if n else "/Ac/Energy"
    also_f = ("/Ac/Energy/Forward",) if totals else ()
    also_r = ("/Ac/Energy/Reverse",) if totals else ()
    return [
        f32(forward, f"{base}/Forward", "kWh", 2, SLOW, cumulative=True, also=also_f),
        f32(reverse, f"{base}/Reverse", "kWh", 2, SLOW, cumulative=True, also=also_r),
    ]


def consumption(n: int | None = None) -> Derived:
    """Net energy import - export (kWh): the fork's path the generation controller reads."""
    base = f"/Ac/L{n}/Energy" if n else "/Ac/Energy"
    return Derived(f"{base}/Consumption", (f"{base}/Forward", f"{base}/Reverse"), difference, "kWh", 2,
                   cumulative=True)


def power_sum(phases: int) -> Derived:
    """Total power as the sum of the phases read in the same block (one read, consistent)."""
    return Derived("/Ac/Power", tuple(f"/Ac/L{n}/Power" for n in range(1, phases + 1)), total, "W", 1, asleep=0.0)


FREQUENCY = f32(0x46, "/Ac/Frequency", "Hz", 2, NORMAL)
TOTAL_PF = f32(0x3E, "/Ac/PowerFactor", "", 3, NORMAL)

IDENTITY = (
    Register("serial", 0xFC00, U32, HOLDING),
    # Code and firmware share the aligned pair 0xFC02-0xFC03; optional because the SDM230's
    # code register is undocumented and may be missing.
    Register("code", 0xFC02, U16, HOLDING, optional=True),
    Register("firmware", 0xFC03, U16, HOLDING, optional=True),
)

SINGLE_PHASE = (
    *phase(1, power_total=True),
    FREQUENCY,
    *energy(0x48, 0x4A, 1, totals=True),
)
SINGLE_PHASE_DERIVED = (consumption(), consumption(1))

SDM630_REGISTERS = (
    *phase(1), *phase(2), *phase(3),
    TOTAL_PF,
    FREQUENCY,
    *energy(0x48, 0x4A),
    *energy(0x15A, 0x160, 1), *energy(0x15C, 0x162, 2), *energy(0x15E, 0x164, 3),
)
SDM630_DERIVED = (power_sum(3), consumption(), consumption(1), consumption(2), consumption(3))

SDM72D_REGISTERS = (*phase(1), *phase(2), *phase(3), TOTAL_PF, FREQUENCY, *energy(0x48, 0x4A))
SDM72D_DERIVED = (power_sum(3), consumption())

SDM72D_V1_REGISTERS = (
    f32(0x34, "/Ac/Power", "W", 1, FAST, asleep=0.0),
    *energy(0x48, 0x4A),
)


class EastronDriver(Driver):
    """Eastron identity: the serial is a number, the meter code is the hardware version."""

    def make_identity(self, values) -> Identity:  # noqa: ANN001
        serial = values.get("serial")
        if serial is None:
            return super().make_identity(values)
        code, fw = values.get("code"), values.get("firmware")
        return Identity(
            serial=str(serial),
            firmware=None if fw is None else f"0x{fw:04X}",
            hardware=None if code is None else f"0x{code:04X}",
            extra={"meter_code": code},
        )


def _meter(name: str, product: str, pid: int, registers, derived, phases: int, rules=RULES,  # noqa: ANN001
           detect: str = "") -> Model:
    return register_model(Model(
        name=name,
        product_name=product,
        product_id=pid,
        vendor="eastron",
        manufacturer="Eastron",
        registers=tuple(registers),
        derived=tuple(derived),
        default_role="grid",
        allowed_roles=METER_ROLES,
        device_instance=40,
        phases=phases,
        rules=rules,
        identity=IDENTITY,
        detect=detect,
        driver=EastronDriver,
        min_timeout=0.3,
        initial_timeout=1.0,
        # Factory rates differ by model and manual (2400 for the small meters, 9600 for
        # others, unverified per model): a scan tries both.
        rates=(9600, 2400),
    ))


SDM230 = _meter("sdm230", "Eastron SDM230", PRODUCT_SDM230, SINGLE_PHASE, SINGLE_PHASE_DERIVED, 1,
                detect="Eastron serial at holding 0xFC00, undocumented meter code, no L2/L3 registers")
SDM120 = _meter("sdm120", "Eastron SDM120", PRODUCT_SDM120, SINGLE_PHASE, SINGLE_PHASE_DERIVED, 1,
                detect="meter code 0x0020 at holding 0xFC02")
SDM630 = _meter("sdm630", "Eastron SDM630", PRODUCT_SDM630, SDM630_REGISTERS, SDM630_DERIVED, 3,
                detect="meter code 0x0070/0x0079, or 0x0000 with live L2/L3 registers")
SDM72D = _meter("sdm72d", "Eastron SDM72D-M V2", PRODUCT_SDM72D, SDM72D_REGISTERS, SDM72D_DERIVED, 3,
                rules=RULES_SDM72, detect="meter code 0x0089 at holding 0xFC02")
SDM72D_V1 = _meter("sdm72d_v1", "Eastron SDM72D-M", PRODUCT_SDM72D_V1, SDM72D_V1_REGISTERS, (consumption(),), 3,
                   rules=RULES_SDM72, detect="meter code 0x0084 at holding 0xFC02")

KNOWN_CODES: dict[int, Model] = {
    CODE_SDM120: SDM120,
    CODE_SDM630: SDM630,
    CODE_SDM630MCT: SDM630,
    CODE_SDM72D_V1: SDM72D_V1,
    CODE_SDM72D_V2: SDM72D,
}


def _f32_of(regs: list[int]) -> float:
    return struct.unpack(">f", struct.pack(">HH", regs[0], regs[1]))[0]


def _plausible_voltage(v: float) -> bool:
    return 50.0 <= v <= 500.0  # NaN fails both comparisons


async def detect(client: UnitClient, timeout: float) -> Model | None:
    """The rule in the module docstring. Exceptions other than exception replies propagate
    (a timeout is "no answer", not "not an Eastron")."""
    await client.read_holding(0xFC00, 2, timeout=timeout)  # serial: exception 2 -> not ours
    try:
        code: int | None = (await client.read_holding(0xFC02, 2, timeout=timeout))[0]
    except ModbusExceptionResponse as exc:
        if exc.code != 2:
            raise
        code = None
    if code in KNOWN_CODES:
        return KNOWN_CODES[code]
    l1 = await client.read_input(0x0000, 2, timeout=timeout)
    if not _plausible_voltage(_f32_of(l1)):
        return None
    try:
        l23 = await client.read_input(0x0002, 4, timeout=timeout)
    except ModbusExceptionResponse as exc:
        return SDM230 if exc.code == 2 else None
    live = [v for v in (_f32_of(l23[0:2]), _f32_of(l23[2:4])) if _plausible_voltage(v)]
    if live and code == 0:
        return SDM630
    return None


register_detector("eastron", detect, order=10)

__all__ = ["SDM120", "SDM230", "SDM630", "SDM72D", "SDM72D_V1", "EastronDriver", "detect"]
