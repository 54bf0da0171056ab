"""Victron EV Charging Station: the code beside ``victron_evcs.toml``.

Only one thing is not a table: rows that exist from a firmware version on (the display
switch from v1.21-01, the minimum current from v1.22-02; firmware at holding 5007-5008,
bytes -, major, minor, beta, compared as upstream compares them).
"""

from __future__ import annotations

from collections.abc import Mapping

from ..registers import Value
from .base import Driver, Identity
from .definition import register_driver
from .victron_em import firmware_text

FW_DISPLAY = (0, 0x01, 0x21, 0x01)
FW_MIN_CURRENT = (0, 0x01, 0x22, 0x02)


class EvChargerDriver(Driver):
    """The table, with the rows the charger's firmware has."""

    def make_identity(self, values: Mapping[str, Value]) -> Identity:
        identity = super().make_identity(values)
        raw = values.get("firmware_raw")
        firmware = tuple(raw.to_bytes(4, "big")) if isinstance(raw, int) else (0, 0xFF, 0xFF, 0xFF)
        lacking = set()
        if firmware < FW_DISPLAY:
            lacking |= set(self.model.sets.get("display", ()))
        if firmware < FW_MIN_CURRENT:
            lacking |= set(self.model.sets.get("min_current", ()))
        if lacking != set(self._excluded):
            self._excluded = frozenset(lacking)
            self.replan()
        return Identity(serial=identity.serial, firmware=firmware_text(raw) if isinstance(raw, int) else None,
                        extra=identity.extra)


register_driver("victron_evcs", EvChargerDriver)

__all__ = ["EvChargerDriver"]
