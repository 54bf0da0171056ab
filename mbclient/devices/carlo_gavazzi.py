"""Carlo Gavazzi energy meters: the code beside ``carlo_gavazzi.toml``.

What is not a table:

* The mode that makes a meter report exported energy as negative power. The EM24 must run
  application "H" (EM24 Ethernet: holding 0xA000, EM24 RS-485: 0x1101, value 7); the ET112,
  ET340 and EM3x0 measurement mode "B" and the EM530/540 mode "C" (0x1103: 1 / 2). The stock
  drivers write it when it differs; so does this one, once per connection, reading it back
  and logging the change. An EM24 whose front selector is locked (0x0304 = 3) cannot be
  configured: that is logged and the meter is used as it is.
* Version numbers: the EM24 Ethernet and EM530/540 code them as nibbles (v >> 12, v >> 8 &
  0xF, v & 0xFF -> "1.2.3"), the other meters as a plain number.
"""

from __future__ import annotations

from collections.abc import Mapping

from ..registers import Value
from .base import Driver, Identity
from .definition import register_driver

#: model -> (identity value name, register, wanted value)
SETUP: Mapping[str, tuple[str, int, int]] = {
    "cg_em24_ethernet": ("application", 0xA000, 7),
    "cg_em24": ("application", 0x1101, 7),
    "cg_et112": ("measurement_mode", 0x1103, 1),
    "cg_et340": ("measurement_mode", 0x1103, 1),
    "cg_em300_s27": ("measurement_mode", 0x1103, 1),
    "cg_em540": ("measurement_mode", 0x1103, 2),
}
NIBBLE_VERSIONS = ("cg_em24_ethernet", "cg_em540")
FRONT_SELECTOR_LOCKED = 3


def nibble_version(v: int) -> str:
    return f"{v >> 12}.{v >> 8 & 0xF}.{v & 0xFF}"


class CarloGavazziDriver(Driver):
    """Versions as the meters code them; the reporting mode set once per connection."""

    def make_identity(self, values: Mapping[str, Value]) -> Identity:
        identity = super().make_identity(values)
        fmt = nibble_version if self.model.name in NIBBLE_VERSIONS else str
        fw, hw = values.get("firmware"), values.get("hardware")
        return Identity(serial=identity.serial,
                        firmware=fmt(fw) if isinstance(fw, int) else None,
                        hardware=fmt(hw) if isinstance(hw, int) else None,
                        extra=identity.extra)

    async def read_identity(self) -> Identity:
        identity = await super().read_identity()
        await self._setup(identity.extra)
        return identity

    async def _setup(self, values: Mapping[str, object]) -> None:
        setup = SETUP.get(self.model.name)
        if setup is None:
            return
        name, address, wanted = setup
        current = values.get(name)
        if current == wanted:
            return
        if values.get("front_selector") == FRONT_SELECTOR_LOCKED:
            self.log.error("%s: front selector locked: cannot set %s to %d (it is %s)", self.model.name, name, wanted,
                           current)
            return
        await self.client.write_register(address, wanted, timeout=self.timeout, priority=True)
        read = (await self.client.read_holding(address, 1, timeout=self.timeout))[0]
        if read == wanted:
            self.log.info("%s: %s %s -> %d (reports exported power as negative)", self.model.name, name, current,
                          wanted)
        else:
            self.log.error("%s: failed to set %s to %d (reads %d)", self.model.name, name, wanted, read)


register_driver("carlo_gavazzi", CarloGavazziDriver)

__all__ = ["CarloGavazziDriver", "nibble_version"]
