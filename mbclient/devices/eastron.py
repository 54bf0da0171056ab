"""Eastron SDM energy meters: the code beside ``eastron.toml`` (which holds the tables).

Two things are not tables:

* the identity format: the serial is a number, the meter code is the hardware version;
* recognising the SDM230, whose meter code is undocumented. The file identifies the
  documented codes (SDM120 0x0020, SDM630 0x0070/0x0079, SDM72D-M 0x0084, V2 0x0089) after
  the unit answered holding 0xFC00 (the serial: Growatt and other non-Eastron units answer
  exception 2 or nothing there). Any other code (0x0000 or undocumented), or a missing
  code register, comes here: input 0x0000 must hold a plausible mains voltage (50..500 V
  as float32; a Growatt's input 0-1 decode to a tiny denormal), and the phase registers
  decide: input 0x0002-0x0005 (L2/L3 voltage) answering exception 2 means a single-phase
  meter -> SDM230; a live L2 or L3 voltage means a three-phase meter -> SDM630 if the code
  is 0x0000 (the early SDM630), otherwise no match; both zero is ambiguous -> no match
  (name the model in the spec, ``:sdm230``).

So an SDM630 is never taken for an SDM230 (it either has its code or live/answering L2/L3
registers), an SDM230 never for an SDM630 (it has no L2/L3 registers), and a Growatt never
for a meter.
"""

from __future__ import annotations

import struct
from typing import TYPE_CHECKING

from ..errors import ModbusExceptionResponse
from ..registers import FAST, Value  # noqa: F401  (FAST: tests read the refresh class from here)
from .base import Driver, Identity
from .definition import Family, register_driver, register_fallback

if TYPE_CHECKING:
    from ..transports.base import UnitClient
    from .base import Model


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


def _f32_of(regs: list[int]) -> float:
    return struct.unpack(">f", struct.pack(">HH", regs[0], regs[1]))[0]


def _plausible_voltage(v: float) -> bool:
    return 50.0 <= v <= 500.0  # NaN fails both comparisons


async def undocumented_code(client: UnitClient, timeout: float, family: Family, code: Value) -> Model | None:
    """The rule in the module docstring for a code the file does not know."""
    l1 = await client.read_input(0x0000, 2, timeout=timeout)
    if not _plausible_voltage(_f32_of(l1)):
        return None
    try:
        l23 = await client.read_input(0x0002, 4, timeout=timeout)
    except ModbusExceptionResponse as exc:
        return family.model("sdm230") if exc.code == 2 else None
    live = [v for v in (_f32_of(l23[0:2]), _f32_of(l23[2:4])) if _plausible_voltage(v)]
    if live and code == 0:
        return family.model("sdm630")
    return None


async def detect(client: UnitClient, timeout: float) -> Model | None:
    """The Eastron family's detector (the file's identification plus the rule above).
    Exceptions other than exception replies propagate (a timeout is "no answer", not
    "not an Eastron")."""
    from . import family

    return await family("eastron").detect(client, timeout)


register_driver("eastron", EastronDriver)
register_fallback("eastron_undocumented_code", undocumented_code)

__all__ = ["EastronDriver", "detect", "undocumented_code"]
