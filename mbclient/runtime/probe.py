"""``mbclient -P SPEC``: identify a device and print what it says about itself, then exit.

The quickest check of wiring, address and baud rate on a GX: nothing is published and
no settings are touched, so it can run next to the service (on another port).
"""

from __future__ import annotations

import sys
from typing import Any, TextIO

import anyio

from ..errors import ConfigError, ModbusError
from ..items import ItemStore
from ..spec import DeviceSpec
from ..transports.base import UnitClient
from .device_task import reason

EXIT_OK = 0
EXIT_FAILED = 1


async def probe_one(spec: DeviceSpec, links: Any, timeout: float = 1.0) -> list[tuple[str, str]]:
    """(label, value) rows describing the unit at ``spec``. Raises ModbusError/ConfigError."""
    from .. import devices

    client = UnitClient(links.get(spec), spec.unit)
    model = devices.get_model(spec.model) if spec.model else await devices.identify(client, timeout=timeout)
    driver = model.create(client, ItemStore(), devices.DeviceOptions(index=spec.index))
    identity = await driver.read_identity()
    model = driver.model  # a family (SunSpec) resolves to the model it found
    bus_ident = model.service_ident(identity.serial, spec.serial_port, spec.unit)
    rows = [
        ("model", model.name),
        ("manufacturer", str(getattr(model, "manufacturer", ""))),
        ("product", str(getattr(identity, "product_name", None) or model.product_name)),
        ("product id", f"0x{model.product_id:04X}"),
        ("serial", str(identity.serial)),
        ("firmware", str(identity.firmware or "")),
        ("hardware", str(identity.hardware or "")),
        ("role", f"{model.default_role} (allowed: {', '.join(model.allowed_roles)})"),
        ("service", f"com.victronenergy.{model.default_role}.{bus_ident}"),
    ]
    for key, value in sorted((getattr(identity, "extra", None) or {}).items()):
        rows.append((str(key), str(value)))
    return rows


async def _probe_all(specs: list[DeviceSpec], out: TextIO, err: TextIO) -> int:
    from ..transports import LinkPool

    status = EXIT_OK
    links = LinkPool()
    try:
        for spec in specs:
            try:
                rows = await probe_one(spec, links)
            except (ModbusError, ConfigError) as exc:
                print(f"{spec}: {reason(exc)}", file=err)
                status = EXIT_FAILED
                continue
            print(str(spec), file=out)
            width = max(len(k) for k, _ in rows)
            for key, value in rows:
                print(f"  {key.ljust(width)}  {value}", file=out)
    finally:
        await links.aclose()
    return status


def run_probe(specs: list[DeviceSpec], out: TextIO = sys.stdout, err: TextIO = sys.stderr) -> int:
    return anyio.run(_probe_all, specs, out, err, backend="asyncio")
