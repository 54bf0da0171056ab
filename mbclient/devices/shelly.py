"""Shelly Pro 3EM over Modbus TCP: what its data file cannot say.

The Pro 3EM stores its texts (serial at input 0-5, model at 6-15) with the two bytes of
every register swapped ("SPEM-003CEBEU" reads "PSME0-30ECEB..."). The file identifies it by
the model register with the fallback ``shelly_swapped_text``, which swaps the pairs back
and claims the unit when the model is a Pro 3EM ("SPEM-003"); the driver ``shelly``
swaps the serial back for the service name.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING

from ..errors import ModbusError
from ..registers import Value
from .base import Driver, Identity, Model
from .definition import Family, register_driver, register_fallback

if TYPE_CHECKING:
    from ..transports.base import UnitClient

PRO_3EM = "SPEM-003"


def unswap(text: str) -> str:
    """Swap the two characters of every register back (a trailing odd one stays)."""
    pairs = [text[i:i + 2][::-1] for i in range(0, len(text), 2)]
    return "".join(pairs).strip()


async def swapped_model(client: UnitClient, timeout: float, family: Family, value: Value) -> Model | None:
    if isinstance(value, str) and unswap(value).startswith(PRO_3EM):
        return family.model("shelly_pro3em")
    return None


class ShellyDriver(Driver):
    def make_identity(self, values: Mapping[str, Value]) -> Identity:
        serial = values.get("serial")
        if not serial:
            raise ModbusError(f"{self.model.name}: unit gave no serial number")
        model = unswap(str(values.get("model_code") or ""))
        return Identity(serial=unswap(str(serial)), extra={"model_code": model})


register_fallback("shelly_swapped_text", swapped_model)
register_driver("shelly", ShellyDriver)

__all__ = ["ShellyDriver", "swapped_model", "unswap"]
