"""Victron EV Charging Station: the code beside ``victron_evcs.toml``.

Not a table:

* rows that exist from a firmware version on (the display switch from v1.21-01, the minimum
  current from v1.22-02; firmware at holding 5007-5008, bytes -, major, minor, beta,
  compared as upstream compares them);
* the name lives in the charger too (holding 5027, 22 registers of UTF-8, low byte first):
  a name set on the charger is published as /CustomName, and a /CustomName written on
  D-Bus (after the runtime accepted and stored it) is written to the charger.
"""

from __future__ import annotations

from collections.abc import Mapping

from ..registers import Value
from .base import Driver, Identity
from .definition import data_type, register_driver
from .victron_em import firmware_text

FW_DISPLAY = (0, 0x01, 0x21, 0x01)
FW_MIN_CURRENT = (0, 0x01, 0x22, 0x02)
NAME_REGISTER = 5027
NAME_TYPE = data_type("utf8text22le")


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

    def __init__(self, *args, **kwargs) -> None:  # noqa: ANN002, ANN003
        super().__init__(*args, **kwargs)
        self._name_write: str | None = None

    def extra_items(self) -> None:
        item = self.store.items.get("/CustomName")
        if item is None:
            return
        previous = item.on_write

        def on_write(value: Value) -> bool:
            if len(str(value).encode("utf-8")) > 2 * NAME_TYPE.words:
                return False
            if previous is not None and not previous(value):
                return False
            self._name_write = str(value)
            self.wakeup.set()
            return True

        item.on_write = on_write

    def on_values(self, changed: Mapping[str, Value]) -> None:
        name = changed.get("device_name")
        if name and "/CustomName" in self.store and self._name_write is None:
            self.store.set("/CustomName", name)

    def writes_deadline(self, now: float) -> float:
        return now if self._name_write is not None else super().writes_deadline(now)

    async def service_device(self, now: float) -> None:
        if self._name_write is None:
            return
        name = self._name_write
        await self.client.write_registers(NAME_REGISTER, NAME_TYPE.encode(name), timeout=self.timeout, priority=True)
        self.log.info("%s: name written to the charger: %r", self.model.name, name)
        if self._name_write == name:
            self._name_write = None
        for sb in self.schedule:
            if any(r.name == "device_name" for r in sb.block.registers):
                sb.next_due = 0.0


register_driver("victron_evcs", EvChargerDriver)

__all__ = ["EvChargerDriver"]
