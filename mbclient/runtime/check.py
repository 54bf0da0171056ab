"""``mbclient --check-device FILE [SPEC]``: validate a definition file and read a device once.

How a user brings up a new meter: the file is checked (one line per mistake, exit 2); given
a spec, the unit is identified with the file's models (or the one the spec names), its
identity and every register are read once, and each path is printed with the raw registers
it came from and the decoded value. Nothing is published, no settings are touched.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TextIO

import anyio

from ..errors import ConfigError, ModbusError, ModbusExceptionResponse
from ..items import ItemStore
from ..registers import Block, plan_blocks
from ..spec import DeviceSpec
from ..transports.base import UnitClient
from .device_task import reason

EXIT_OK = 0
EXIT_FAILED = 1


def check_file(path: str, out: TextIO = sys.stdout):  # noqa: ANN201
    """Load the file (ConfigError on a mistake) and print what it defines."""
    from ..devices.definition import load_family

    fam = load_family(path)
    print(f"{path}: ok, family {fam.name}", file=out)
    for m in fam.models:
        paths = {p for r in m.registers for p in r.paths} | {d.name for d in m.derived}
        print(f"  {m.name}: {m.product_name}, {len(m.registers)} registers, {len(paths)} paths; "
              f"identified by {m.detect}", file=out)
    return fam


async def read_once(spec: DeviceSpec, fam, out: TextIO, timeout: float = 1.0) -> int:  # noqa: ANN001
    from .. import devices
    from ..transports import LinkPool

    links = LinkPool()
    try:
        client = UnitClient(links.get(spec), spec.unit)
        if spec.model:
            model = devices.get_model(spec.model)
        else:
            model = await fam.detect(client, timeout)
            if model is None:
                raise ConfigError(f"{spec}: the unit matches no model of {fam.source} (name one: :<model>)")
        driver = model.create(client, ItemStore(), devices.DeviceOptions(baud=spec.rate if spec.is_serial else None))
        identity = await driver.read_identity()
        print(f"{spec}: {model.name} ({model.product_name}), serial {identity.serial}, "
              f"firmware {identity.firmware or '-'}, service com.victronenergy.{driver.role}."
              f"{model.service_ident(identity.serial, spec.serial_port, spec.unit)}",
              file=out)
        driver.add_items()
        failed = 0
        rows: list[tuple[str, str, str, str]] = []
        for block in plan_blocks(driver.registers(), model.rules, max_gap=0):
            failed += await _read_block(driver, client, block, rows, timeout)
        for d in driver.derived():
            rows.append((d.name, "derived", "", f"{_text(driver, d.name)}  = {d.fn.__name__}({', '.join(d.inputs)})"))
        width = [max(len(r[i]) for r in rows) for i in range(3)] if rows else [0, 0, 0]
        for r in rows:
            print("  " + "  ".join(c.ljust(w) for c, w in zip(r[:3], width)) + "  " + r[3], file=out)
        return EXIT_FAILED if failed else EXIT_OK
    finally:
        await links.aclose()


async def _read_block(driver, client, block: Block, rows: list, timeout: float) -> int:  # noqa: ANN001
    try:
        regs = await client.read(int(block.table), block.address, block.count, timeout=timeout)
    except ModbusExceptionResponse as exc:
        for r in block.registers:
            rows.append((r.name, f"{block.table.name.lower()} {r.address:#06x}", f"exception {exc.code}",
                         "(optional: the unit lacks it)" if r.optional else "NOT READABLE"))
        return 0 if block.optional else 1
    driver._apply(block.decode(regs))
    for r in block.registers:
        off = r.address - block.address
        raw = " ".join(f"{w:04X}" for w in regs[off : off + r.words])
        label = ", ".join(r.paths) if r.paths else r.name
        rows.append((label, f"{block.table.name.lower()} {r.address:#06x} {r.type.name}", raw, _text(driver, r.name)))
    return 0


def _text(driver, name: str) -> str:  # noqa: ANN001
    value = driver.values.get(name)
    if value is None:
        return "invalid"
    if name in driver.store:
        return f"{driver.store.item(name).text} ({value!r})"
    return repr(value)


def run_check(path: str, spec: DeviceSpec | None, out: TextIO = sys.stdout, err: TextIO = sys.stderr) -> int:
    """Raises ConfigError for a bad file or spec (exit 2 in the caller)."""
    from .. import devices

    fam = check_file(path, out)
    if spec is None:
        return EXIT_OK
    devices.add_family(fam, user=True)
    if spec.model and spec.model not in {m.name for m in fam.models}:
        devices.get_model(spec.model)  # ConfigError if unknown anywhere
    try:
        return anyio.run(read_once, spec, fam, out, backend="asyncio")
    except ModbusError as exc:
        print(f"{spec}: {reason(exc)}", file=err)
        return EXIT_FAILED


__all__ = ["check_file", "run_check", "Path"]
