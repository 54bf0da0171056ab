"""Meters without identification registers (Hiking DDS238, ORNO WE-5xx, Chint DTSU666).

Such a meter cannot tell which model it is, nor give a serial number. mbclient therefore
never guesses one: the model is named in the spec (``rtu:ttyUSB0:9600:3:dds238``), and the
definition file names the driver ``no_id``, which

* takes the unit's place as its serial (``<port>_<unit>``, e.g. ``ttyUSB0_3``): the service
  name and settings stay the same across restarts as long as the meter keeps its address;
* checks at identification that the meter's readings are plausible for the named model:
  the identity rows ``volts`` (a phase voltage, 80-300 V) and ``hertz`` (45-65 Hz), read at
  the named model's addresses in its coding. A unit answering at other addresses, or with
  another coding (another model), fails the check and is never published as the named
  model; the log says why. The check runs on every (re)identification.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

from ..errors import ModbusError
from ..registers import Value
from .base import Driver, Identity
from .definition import register_driver

VOLTS = (80.0, 300.0)
HERTZ = (45.0, 65.0)
_BAD = re.compile(r"[^A-Za-z0-9_]")


class NotThisModel(ModbusError):
    """The unit answers, but not like the model named in the spec."""


def plausible(values: Mapping[str, Value]) -> str | None:
    """Why ``values`` (identity rows volts/hertz) do not fit, or None if they do."""
    for name, (lo, hi), unit in (("volts", VOLTS, "V"), ("hertz", HERTZ, "Hz")):
        if name not in values:
            continue
        v = values[name]
        if not isinstance(v, (int, float)) or not lo <= float(v) <= hi:
            return f"{name} reads {v!r}, not {lo:g}-{hi:g} {unit}"
    return None


def place_serial(link_name: str, unit: int) -> str:
    """``ttyUSB0_3`` for /dev/ttyUSB0 unit 3, ``192_168_1_5_502_1`` for a TCP gateway."""
    where = link_name.rsplit(" ", 1)[-1].rsplit("/", 1)[-1]
    return _BAD.sub("_", f"{where}_{unit}")


class NoIdDriver(Driver):
    """A table driver whose identity is the unit's place, after a plausibility check."""

    def make_identity(self, values: Mapping[str, Value]) -> Identity:
        why = plausible(values)
        if why is not None:
            raise NotThisModel(f"unit {self.client.unit} does not read like a {self.model.name}: {why}")
        serial = values.get("serial") or place_serial(str(getattr(self.client.link, "name", "")), self.client.unit)
        return Identity(serial=str(serial), extra={k: v for k, v in values.items() if k != "serial"})


register_driver("no_id", NoIdDriver)

__all__ = ["HERTZ", "NoIdDriver", "NotThisModel", "VOLTS", "place_serial", "plausible"]
