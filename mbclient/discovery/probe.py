"""Asking one unit "who are you?" during a scan: read-only, and quick about silence.

A scan asks many addresses that are not there. Two rules keep that cheap and harmless:

* **Read-only.** ``ScanClient`` lets only the read function codes (1-4) reach the wire; a
  detector or identity read that wanted to write is refused before anything is sent. A
  scan must never change a device it does not know yet.
* **Silence is decided once.** The model registry's ``identify()`` tries every family's
  detector in turn. For a silent address every detector would wait out its own timeout
  (and the serial arbiter holds a unit's next request back after a timeout, so a late
  reply is never mistaken for the next one's). ``ScanClient`` therefore answers every
  request after the first unanswered one with an immediate ``ModbusTimeout``: one timeout
  per silent address, whatever the number of families.

The registry decides the model (``mbclient.devices.identify``); this module never names
a family.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from .. import devices
from ..errors import ConfigError, FrameError, LinkDown, ModbusError, ModbusExceptionResponse, ModbusTimeout
from ..items import ItemStore
from ..modbus.pdu import Request
from ..spec import DeviceSpec
from ..transports.base import Link, UnitClient

log = logging.getLogger("mbclient.discovery")

#: Modbus read functions: coils, discrete inputs, holding and input registers.
READ_FUNCTIONS = frozenset({1, 2, 3, 4})
#: Modbus exception code 1: what a unit answers to a function it will not serve.
ILLEGAL_FUNCTION = 1


class ScanClient(UnitClient):
    """A ``UnitClient`` for scanning: read functions only, one timeout per silent unit."""

    def __init__(self, link: Link, unit: int) -> None:
        super().__init__(link, unit)
        self.answered = False  # any reply at all (a value, an exception, a bad frame)
        self.silent = False  # the first request went unanswered

    async def _do(self, request: Request, timeout: float, priority: bool = False) -> list[int]:
        if request.function not in READ_FUNCTIONS:
            log.warning("unit %s: scan refused to send function %d (scans only read)", self.unit, request.function)
            raise ModbusExceptionResponse(request.function, ILLEGAL_FUNCTION)
        if self.silent:
            raise ModbusTimeout(f"unit {self.unit}: silent")
        try:
            values = await self.link.transact(self.unit, request, timeout=timeout, priority=priority)
        except ModbusTimeout:
            if not self.answered:
                self.silent = True
            raise
        except (ModbusExceptionResponse, FrameError):
            self.answered = True
            raise
        self.answered = True
        return values


@dataclass(frozen=True, slots=True)
class Found:
    """A unit that answered a scan. ``model`` is None when it answered but no known model
    matched (its identification registers held something we do not recognise)."""

    spec: DeviceSpec  # as saved: method:target:rate_or_port:unit, no model suffix
    model: str | None = None
    serial: str = ""
    product: str = ""
    ident: str = ""  # <vendor>_<serial>: the /Settings/Devices/<ident> element
    role: str = ""
    problem: str = ""  # why the model is None
    #: The other devices behind the same unit address (a SunSpec chain's meter after its
    #: inverter), each with a ``<model>@<n>`` spec; found with the first one.
    more: tuple[Found, ...] = ()

    @property
    def known(self) -> bool:
        return self.model is not None


async def probe_unit(link: Link, spec: DeviceSpec, *, timeout: float) -> Found | None:
    """Identify the unit ``spec.unit`` on ``link``; None if it is silent.

    ``LinkDown`` propagates (the port or host is gone: the caller decides what that means
    for the rest of the scan). A unit that answers with garbage or with values no model
    recognises is a ``Found`` without a model, described in ``problem``.
    """
    client = ScanClient(link, spec.unit)
    try:
        model = await devices.identify(client, timeout=timeout)
    except LinkDown:
        raise
    except ModbusTimeout:
        return None
    except FrameError as exc:
        if not client.answered:
            return None
        log.debug("[%s] answered with a bad frame: %s", spec, exc)
        return Found(spec, problem=f"bad reply ({exc})")
    except ConfigError:
        return Found(spec, problem="answers, but matches no known model")
    except ModbusError as exc:
        if not client.answered:
            return None
        return Found(spec, problem=str(exc))
    driver = model.create(client, ItemStore(), devices.DeviceOptions())
    try:
        client.silent = False  # a slow first identity read is not silence
        identity = await driver.read_identity()
    except LinkDown:
        raise
    except (ModbusError, ConfigError, ValueError) as exc:
        return Found(spec, model.name, product=model.product_name, problem=f"identity not readable ({exc})")
    model = driver.model  # a family resolves to the model it found (SunSpec)
    serial = str(identity.serial)
    more = await _devices_behind(client, spec, model, getattr(driver, "devices_behind", 1))
    return Found(
        spec,
        model.name,
        serial=serial,
        product=identity.product_name or model.product_name,
        ident=model.ident(serial),
        role=model.default_role,
        more=more,
    )


async def _devices_behind(client: ScanClient, spec: DeviceSpec, model: devices.Model, count: int) -> tuple[Found, ...]:
    """Devices 2..count behind one unit address (``driver.devices_behind``), as
    ``<family>@<n>`` specs; one whose identity cannot be read is left out."""
    family = model.family or model.name
    out: list[Found] = []
    for index in range(2, min(count, model.max_devices) + 1):
        sub = DeviceSpec(spec.method, spec.target, spec.rate, spec.unit, family, index)
        try:
            driver = devices.get_model(family).create(client, ItemStore(), devices.DeviceOptions(index=index))
            identity = await driver.read_identity()
        except LinkDown:
            raise
        except (ModbusError, ConfigError, ValueError) as exc:
            log.debug("[%s] not readable: %s", sub, exc)
            continue
        m, serial = driver.model, str(identity.serial)
        out.append(Found(sub, m.name, serial=serial, product=identity.product_name or m.product_name,
                         ident=m.ident(serial), role=m.default_role))
    return tuple(out)
