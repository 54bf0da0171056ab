"""Device specs as upstream dbus-modbus-client writes them.

``rtu:<tty>:<baud>:<unit>``, ``ascii:<tty>:<baud>:<unit>``, ``tcp:<host>:<port>:<unit>``,
``udp:<host>:<port>:<unit>``, ``rtuovertcp:<host>:<port>:<unit>`` (RTU frames through a
TCP serial gateway), each with an optional trailing ``:<model>``. ``<tty>`` is a name under
/dev or an absolute path. IPv6 hosts go in brackets: ``tcp:[::1]:502:1``.

Several devices behind one unit address (a SunSpec model chain holding an inverter and a
meter, or several inverters behind a data manager) are told apart by a device index after
the model: ``tcp:192.168.1.5:502:1:sunspec@2`` is the second device of that unit's chain.
Without an index a spec means the first device; only models that describe several devices
per unit accept one (``Model.max_devices``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from .errors import ConfigError

SERIAL_METHODS = ("rtu", "ascii")
NET_METHODS = ("tcp", "udp", "rtuovertcp")
METHODS = SERIAL_METHODS + NET_METHODS
STANDARD_BAUDS = (1200, 2400, 4800, 9600, 14400, 19200, 38400, 57600, 115200, 230400)

_SPEC_RE = re.compile(r"^(?P<method>[a-z]+):(?P<target>\[[^\]]+\]|[^:]+):(?P<rest>.*)$")
_HOST_RE = re.compile(r"^[A-Za-z0-9.\-_]+$|^\[[0-9A-Fa-f:.]+\]$")
_MODEL_RE = re.compile(r"^[a-z0-9][a-z0-9_\-]*$")
_INDEX_RE = re.compile(r"^(?P<model>[^@]*)@(?P<index>[0-9]{1,2})$")
MAX_INDEX = 32


@dataclass(frozen=True, slots=True)
class DeviceSpec:
    method: str
    target: str  # tty name/path, or host
    rate: int  # baud for serial methods, port for network methods
    unit: int
    model: str | None = None
    index: int = 1  # which device behind this unit address (1: the first or only one)

    @property
    def is_serial(self) -> bool:
        return self.method in SERIAL_METHODS

    @property
    def device_path(self) -> str:
        """Serial device path (/dev/<name> unless absolute)."""
        return self.target if self.target.startswith("/") else f"/dev/{self.target}"

    @property
    def serial_port(self) -> str | None:
        """The serial device path, or None for a device on the network."""
        return self.device_path if self.is_serial else None

    @property
    def link_key(self) -> tuple[str, str, int]:
        """Devices with the same key share one transport (one arbiter per serial port)."""
        if self.is_serial:
            return ("serial", self.device_path, self.rate)
        return (self.method, self.target, self.rate)

    @property
    def port_name(self) -> str:
        """Name used in /Settings/ModbusClient/<name>/Devices: the tty name, or 'tcp'."""
        if self.is_serial:
            return self.target.rsplit("/", 1)[-1]
        return "tcp"

    def __str__(self) -> str:
        base = f"{self.method}:{self.target}:{self.rate}:{self.unit}"
        model = f"{self.model}@{self.index}" if self.index > 1 else self.model
        return f"{base}:{model}" if model else base


def parse_spec(text: str) -> DeviceSpec:
    """Parse one spec; raise ConfigError naming the bad field."""
    s = text.strip()
    m = _SPEC_RE.match(s)
    if not m:
        raise ConfigError(f"bad device spec {text!r}: expected method:target:rate_or_port:unit[:model]")
    method, target = m["method"], m["target"]
    if method not in METHODS:
        raise ConfigError(f"bad device spec {text!r}: unknown method {method!r} (one of {', '.join(METHODS)})")
    parts = m["rest"].split(":")
    if len(parts) not in (2, 3):
        raise ConfigError(f"bad device spec {text!r}: expected method:target:rate_or_port:unit[:model]")
    rate_s, unit_s = parts[0], parts[1]
    model = parts[2] if len(parts) == 3 else None

    if method in SERIAL_METHODS:
        if not target or "\x00" in target or ".." in target.split("/"):
            raise ConfigError(f"bad device spec {text!r}: bad serial port {target!r}")
        try:
            rate = int(rate_s)
        except ValueError:
            raise ConfigError(f"bad device spec {text!r}: baud rate {rate_s!r} is not a number") from None
        if rate not in STANDARD_BAUDS:
            raise ConfigError(
                f"bad device spec {text!r}: baud rate {rate} not supported "
                f"({', '.join(map(str, STANDARD_BAUDS))})"
            )
    else:
        if not _HOST_RE.match(target):
            raise ConfigError(f"bad device spec {text!r}: bad host {target!r}")
        try:
            rate = int(rate_s)
        except ValueError:
            raise ConfigError(f"bad device spec {text!r}: port {rate_s!r} is not a number") from None
        if not 1 <= rate <= 65535:
            raise ConfigError(f"bad device spec {text!r}: port {rate} outside 1..65535")
    try:
        unit = int(unit_s)
    except ValueError:
        raise ConfigError(f"bad device spec {text!r}: unit {unit_s!r} is not a number") from None
    lo = 1 if method in SERIAL_METHODS else 0
    if not lo <= unit <= 247:
        raise ConfigError(f"bad device spec {text!r}: unit {unit} outside {lo}..247")
    index = 1
    if model is not None and "@" in model:
        m_index = _INDEX_RE.match(model)
        if not m_index or not 1 <= int(m_index["index"]) <= MAX_INDEX:
            raise ConfigError(f"bad device spec {text!r}: device index after '@' must be 1..{MAX_INDEX}")
        model, index = m_index["model"], int(m_index["index"])
        if not model:
            raise ConfigError(f"bad device spec {text!r}: a device index needs the model before '@'")
    if model is not None and not _MODEL_RE.match(model):
        raise ConfigError(f"bad device spec {text!r}: bad model name {model!r}")
    return DeviceSpec(method, target, rate, unit, model, index)


def parse_specs(text: str) -> list[DeviceSpec]:
    """A comma list (the settings format); empty items are ignored, duplicates dropped."""
    seen: dict[str, DeviceSpec] = {}
    for item in text.split(","):
        if item.strip():
            spec = parse_spec(item)
            seen.setdefault(str(spec), spec)
    return list(seen.values())
