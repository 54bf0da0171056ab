"""What a device told us about itself, and remembering it across restarts.

Why remember: a GX that reboots at night finds its PV inverter asleep. Without a memory
the inverter would vanish from the GUI and VRM until sunrise (upstream's behaviour). With
the model and serial stored in settings, the service is published at once with
/Connected=0 under the same name and instance it had yesterday.

Settings layout (localsettings rules: every path element ``[A-Za-z0-9_]``, none starting
with ``_``)::

    /Settings/ModbusClient/<port>/Known/<spec key>/Model
                                               .../Serial
                                               .../FirmwareVersion
                                               .../HardwareVersion
                                               .../ProductName
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from ..spec import DeviceSpec

_BAD = re.compile(r"[^A-Za-z0-9_]")


def setting_element(text: str) -> str:
    """Make ``text`` a valid settings path element (and never start it with ``_``)."""
    s = _BAD.sub("_", text).lstrip("_")
    return s or "x"


def ident_part(text: str) -> str:
    """Characters allowed in a bus-name element and a settings element: ``[A-Za-z0-9_]``."""
    return _BAD.sub("_", text)


def spec_key(spec: DeviceSpec) -> str:
    """Settings element for one configured device, below its port's element.

    Serial: the port is the parent element, so method and unit suffice (``rtu_1``); the
    baud rate is left out on purpose, a device keeps its identity when the line speed is
    changed. Network: host, port and unit (``tcp_192_168_1_5_502_1``). The model suffix
    of a spec is never part of it: naming the model does not make it another device. A
    device index (``...:sunspec@2``, the second device behind that unit) is: ``_d2``.
    """
    sub = f"_d{spec.index}" if spec.index > 1 else ""
    if spec.is_serial:
        return setting_element(f"{spec.method}_{spec.unit}{sub}")
    return setting_element(f"{spec.method}_{spec.target}_{spec.rate}_{spec.unit}{sub}")


def known_base(spec: DeviceSpec) -> str:
    return f"/Settings/ModbusClient/{setting_element(spec.port_name)}/Known/{spec_key(spec)}"


def _text(value: Any) -> str:
    return "" if value is None else str(value)


@dataclass(frozen=True, slots=True)
class KnownIdentity:
    """The identity paths of a device, independent of any driver's Identity class."""

    model: str
    serial: str
    firmware: str = ""
    hardware: str = ""
    product_name: str = ""

    @classmethod
    def from_driver(cls, model: str, identity: Any) -> KnownIdentity:
        """Read the fields a driver's ``read_identity()`` result offers (by common names)."""

        def pick(*names: str) -> str:
            for n in names:
                v = getattr(identity, n, None)
                if v not in (None, ""):
                    return _text(v)
            return ""

        return cls(
            model=model,
            serial=pick("serial"),
            firmware=pick("firmware", "firmware_version"),
            hardware=pick("hardware", "hardware_version"),
            product_name=pick("product_name", "product"),
        )

    FIELDS = (("Model", "model"), ("Serial", "serial"), ("FirmwareVersion", "firmware"),
              ("HardwareVersion", "hardware"), ("ProductName", "product_name"))


def memory_settings(spec: DeviceSpec) -> list[tuple[str, str]]:
    """(path, default) of the string settings that remember ``spec``'s identity."""
    base = known_base(spec)
    return [(f"{base}/{name}", "") for name, _ in KnownIdentity.FIELDS]


def identity_from_settings(spec: DeviceSpec, values: dict[str, Any]) -> KnownIdentity | None:
    """The remembered identity, if both model and serial were stored."""
    base = known_base(spec)
    fields = {attr: _text(values.get(f"{base}/{name}")) for name, attr in KnownIdentity.FIELDS}
    if not fields["model"] or not fields["serial"]:
        return None
    return KnownIdentity(**fields)


def identity_to_settings(spec: DeviceSpec, known: KnownIdentity) -> dict[str, str]:
    base = known_base(spec)
    return {f"{base}/{name}": getattr(known, attr) for name, attr in KnownIdentity.FIELDS}
